"""edge2core: the edge-to-core AI/ML loop for image data."""

__version__ = "0.1.0"
