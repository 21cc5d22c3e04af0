"""fedmeta simulation package."""
