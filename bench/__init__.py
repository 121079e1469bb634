"""Benchmarks: each writes a dated JSON file to bench/results/."""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
TINY_MODELS = "tiny random-weight fixtures (localstability models make-tiny)"


def machine() -> str:
    return f"{platform.machine()}, {platform.processor() or 'cpu'}, CPU only"


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """bench/results/NAME-YYYY-MM-DD.json; prints and returns its path."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}-{datetime.now(UTC).strftime('%Y-%m-%d')}.json"
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    return out
