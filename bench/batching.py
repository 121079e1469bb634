"""The gain from batching, on the tiny models, in two ways, each against a baseline run in the
same command in alternating rounds (this machine's speed drifts by 10-20 % over minutes):

1. pipeline: n requests (different prompts and seeds) run one after another through our
   diffusion functions vs the same n as one batched call; also how far each batched image is
   from its solo run (pixels differing, largest difference in 1/255).
2. http: 16 concurrent clients against a server with batching off vs one with it on (both
   up at once; only one is busy at a time).

    .venv/bin/python -m bench.batching [--rounds 3] [--sizes 2 4] [--steps 20] [--skip-http]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import TINY_MODELS, machine, write_results
from bench.throughput import run_http

CASES = [
    ("stable-diffusion-v1-6", "sd1", 512, 512),
    ("stable-diffusion-512-v2-1", "sd2", 512, 512),
    ("stable-diffusion-xl-1024-v1-0", "sdxl", 1024, 1024),
]
PROMPTS = ["a lighthouse on a cliff at dusk", "a red fox in the snow", "a bowl of fruit", "a city"]


def pipeline_case(
    folder: Path, width: int, height: int, sizes: list[int], rounds: int, steps: int = 20
) -> Any:
    from diffusers import DiffusionPipeline

    from localstability.engines import Family
    from localstability.inference.diffusion import TextToImageParams, run_text_to_image
    from localstability.inference.prompts import WeightedPrompt

    family = Family(folder.name)  # the tiny fixtures' folders are named by family
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)

    def params(index: int, steps: int = steps) -> TextToImageParams:
        prompt = WeightedPrompt(PROMPTS[index % len(PROMPTS)], 1.0)
        return TextToImageParams(
            prompts=[prompt],
            steps=steps,
            cfg_scale=7.0,
            sampler=None,
            seeds=[index + 1],
            width=width,
            height=height,
        )

    run_text_to_image(pipe, [params(0, steps=min(10, steps))], family=family)  # warm-up
    rows = []
    for size in sizes:
        parts = [params(i) for i in range(size)]
        solo_s, batched_s = [], []
        solo_images: list[Any] = []
        batched_images: list[Any] = []
        for _ in range(rounds):
            started = time.perf_counter()
            solo_images = [
                run_text_to_image(pipe, [part], family=family)[0][0].image for part in parts
            ]
            solo_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            batched_images = [r[0].image for r in run_text_to_image(pipe, parts, family=family)]
            batched_s.append(time.perf_counter() - started)
        differences = [
            np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
            for a, b in zip(solo_images, batched_images, strict=True)
        ]
        row = {
            "batch": size,
            "solo_s": round(statistics.median(solo_s), 3),
            "batched_s": round(statistics.median(batched_s), 3),
            "gain": round(
                statistics.median(s / b for s, b in zip(solo_s, batched_s, strict=True)), 3
            ),
            "max_pixel_difference": int(max(d.max() for d in differences)),
            "pixels_differing": round(max(float((d > 0).any(-1).mean()) for d in differences), 5),
        }
        print(f"  batch of {size}: {row}", flush=True)
        rows.append(row)
    return rows


def http_case(servers: dict[str, Any], engine_id: str, size: tuple[int, int], args: Any) -> Any:
    bodies = [
        {
            "text_prompts": [{"text": PROMPTS[i % len(PROMPTS)]}],
            "width": size[0],
            "height": size[1],
            "steps": args.steps,
            "seed": i + 1,
        }
        for i in range(args.requests)
    ]
    rounds = []
    for _ in range(args.rounds):
        off = run_http(servers["off"], engine_id, bodies, args.clients)
        on = run_http(servers["on"], engine_id, bodies, args.clients)
        rounds.append(
            {
                "off_images_per_s": round(args.requests / off, 3),
                "on_images_per_s": round(args.requests / on, 3),
                "gain": round(off / on, 3),
            }
        )
        print(f"  http round: {rounds[-1]}", flush=True)
    return {"median_gain": statistics.median(r["gain"] for r in rounds), "rounds": rounds}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run with these command-line arguments (default: sys.argv); returns what it wrote."""
    from localstability.testing import run_cli, start_server

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--engine", action="append", help="only these engine ids")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip-http", action="store_true")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        tiny = Path(scratch)
        print("building tiny models...", flush=True)
        run_cli("models", "make-tiny", str(tiny))
        servers: dict[str, Any] = {}
        try:
            if not args.skip_http:
                for name, batching in (("off", "false"), ("on", "true")):
                    servers[name] = start_server(
                        tiny / "localstability.toml",
                        tiny / f"server-{name}.log",
                        env={
                            "LOCALSTABILITY_BATCHING": batching,
                            "LOCALSTABILITY_DATA_DIR": str(tiny / f"data-{name}"),
                        },
                    )
            for engine_id, family, width, height in CASES:
                if args.engine and engine_id not in args.engine:
                    continue
                print(f"{engine_id} {width}x{height}, {args.steps} steps", flush=True)
                row: dict[str, Any] = {
                    "engine_id": engine_id,
                    "size": f"{width}x{height}",
                    "pipeline": pipeline_case(
                        tiny / family, width, height, args.sizes, args.rounds, args.steps
                    ),
                }
                if servers:
                    row["http"] = http_case(servers, engine_id, (width, height), args)
                results.append(row)
        finally:
            for server in servers.values():
                server.stop()
    payload: dict[str, Any] = {
        "benchmark": "batching: batched vs one-by-one, pipeline and HTTP",
        "models": TINY_MODELS,
        "machine": machine(),
        "steps": args.steps,
        "rounds": args.rounds,
        "http": None
        if args.skip_http
        else (
            f"{args.clients} clients, {args.requests} requests; batching off vs on "
            "(each engine's batch_max_images; SDXL: 1, so no batching there)"
        ),
        "results": results,
    }
    write_results("batching", payload)
    return payload


if __name__ == "__main__":
    main()
