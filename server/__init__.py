"""fedmeta server package."""
