"""Latency of text-to-image through our HTTP server vs calling the diffusers pipeline directly.

Both run in this one command on the same machine, one after the other, on the tiny models (or
any config given with --config whose engines load here). The figure is the ratio of medians.

    .venv/bin/python -m bench.latency [--repeats 5] [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import TINY_MODELS, machine, write_results

CASES = [
    # engine id, tiny family folder, width, height
    ("stable-diffusion-v1-6", "sd1", 512, 512),
    ("stable-diffusion-512-v2-1", "sd2", 512, 512),
    ("stable-diffusion-xl-1024-v1-0", "sdxl", 1024, 1024),
]
PROMPT, NEGATIVE = "a lighthouse on a cliff at dusk", "blurry"


def time_http(client: Any, engine_id: str, body: dict[str, Any], repeats: int) -> list[float]:
    path = f"/v1/generation/{engine_id}/text-to-image"
    client.post(path, json=body).raise_for_status()  # warm-up: loads the pipeline
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        response = client.post(path, json=body)
        timings.append(time.perf_counter() - started)
        response.raise_for_status()
    return timings


def time_direct(folder: Path, width: int, height: int, steps: int, repeats: int) -> list[float]:
    import torch
    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler

    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def once() -> None:
        image = pipe(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=7.0,
            generator=[torch.Generator("cpu").manual_seed(1)],
        ).images[0]
        image.save(Path(tempfile.gettempdir()) / "bench-direct.png")  # we encode a PNG too

    once()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        once()
        timings.append(time.perf_counter() - started)
    return timings


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run with these command-line arguments (default: sys.argv); returns what it wrote."""
    from localstability.testing import run_cli, start_server

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        tiny = Path(scratch)
        print("building tiny models...", flush=True)
        run_cli("models", "make-tiny", str(tiny))
        server = start_server(tiny / "localstability.toml", tiny / "server.log")
        rows = []
        try:
            with server.client() as client:
                for engine_id, family, width, height in CASES:
                    body = {
                        "text_prompts": [
                            {"text": PROMPT, "weight": 1},
                            {"text": NEGATIVE, "weight": -1},
                        ],
                        "width": width,
                        "height": height,
                        "steps": args.steps,
                        "seed": 1,
                    }
                    http = time_http(client, engine_id, body, args.repeats)
                    direct = time_direct(tiny / family, width, height, args.steps, args.repeats)
                    row = {
                        "engine_id": engine_id,
                        "size": f"{width}x{height}",
                        "steps": args.steps,
                        "http_median_s": round(statistics.median(http), 4),
                        "direct_median_s": round(statistics.median(direct), 4),
                        "ratio": round(statistics.median(http) / statistics.median(direct), 3),
                    }
                    rows.append(row)
                    print(
                        f"{engine_id:32} {row['size']:>9}  http {row['http_median_s']:.3f}s  "
                        f"direct {row['direct_median_s']:.3f}s  ratio {row['ratio']:.3f}",
                        flush=True,
                    )
        finally:
            server.stop()
    payload: dict[str, Any] = {
        "benchmark": "text-to-image latency, HTTP server vs direct diffusers call",
        "models": TINY_MODELS,
        "machine": machine(),
        "repeats": args.repeats,
        "results": rows,
    }
    write_results("latency", payload)
    return payload


if __name__ == "__main__":
    main()
