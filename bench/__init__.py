"""Benchmarks: each writes a dated JSON file to bench/results/ (or $BENCH_RESULTS_DIR).

`python -m bench` runs them all (bench/__main__.py); each also runs alone as
`python -m bench.NAME`.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
# Where write_results puts its files instead of RESULTS (quick and trial runs).
RESULTS_ENV = "BENCH_RESULTS_DIR"
TINY_MODELS = "tiny random-weight fixtures (localstability models make-tiny)"


def machine() -> str:
    return f"{platform.machine()}, {platform.processor() or 'cpu'}, CPU only"


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def results_dir() -> Path:
    """$BENCH_RESULTS_DIR when set, else bench/results/."""
    return Path(os.environ.get(RESULTS_ENV) or RESULTS)


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """RESULTS_DIR/NAME-YYYY-MM-DD.json; prints and returns its path."""
    directory = results_dir()
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{name}-{today()}.json"
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    return out


def finish(name: str, began: float, **figures: Any) -> dict[str, Any]:
    """A tiny-model benchmark's payload (its figures, the machine, the seconds since `began`,
    a perf_counter reading), written by write_results; returned."""
    import time

    payload = {
        "benchmark": name,
        "machine": machine(),
        "models": TINY_MODELS,
        **figures,
        "seconds": round(time.perf_counter() - began, 1),
    }
    write_results(name, payload)
    return payload


def repeats_and_steps(argv: list[str] | None, description: str | None) -> Any:
    """The arguments of a benchmark that takes --repeats (5) and --steps (10)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    return parser.parse_args(argv)
