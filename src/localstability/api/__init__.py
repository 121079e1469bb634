"""The HTTP front door (FastAPI). This layer never imports torch."""
