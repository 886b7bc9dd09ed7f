"""The package version (one home: ``ndcam.__version__``, the CLI and the dataset store read it here)."""

__version__ = "0.1.0"
