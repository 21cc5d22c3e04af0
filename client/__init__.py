"""fedmeta client package."""
