"""`python -m localstability` runs the CLI."""

from localstability.cli import app

app()
