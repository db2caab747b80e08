"""embench: the embedding benchmark pipeline library (config, model preparation, CLI)."""

__version__ = "0.1.0"
