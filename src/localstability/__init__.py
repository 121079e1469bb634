"""localstability: a self-hosted, drop-in implementation of the Stability AI REST API v1."""

__version__ = "0.1.0"
