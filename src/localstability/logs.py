"""Structured logging: one JSON object per line (or plain text with log_json = false)."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    """Route the package's and uvicorn's logs to stderr in one format."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # from_pipe casts with dtype=None, and diffusers then warns on every request that
    # "modules should be kept in float32: []" (an empty list): noise, not a problem.
    logging.getLogger("diffusers.models.modeling_utils").setLevel("ERROR")
    # Our own middleware logs each request; uvicorn's access line would repeat it.
    logging.getLogger("uvicorn.access").setLevel("WARNING")
