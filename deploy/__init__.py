"""fedmeta deploy package."""
