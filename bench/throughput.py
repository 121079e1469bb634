"""Throughput of 16 concurrent clients through our HTTP server vs the same requests run one
after another by calling the diffusers pipeline directly (no batching on either side).

Both run in this one command, on the tiny models, in alternating rounds (this machine's speed
drifts by 10-20 % over minutes, so each round's two sides run back to back). The figure is
the median over rounds of the ratio of images per second (HTTP / direct): 1.0 means the
server's queue, billing, HTTP and PNG/base64 encoding cost nothing.

    .venv/bin/python -m bench.throughput [--requests 16] [--clients 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import TINY_MODELS, machine, write_results

CASES = [
    ("stable-diffusion-v1-6", "sd1", 512, 512),
    ("stable-diffusion-xl-1024-v1-0", "sdxl", 1024, 1024),
]
PROMPT = "a lighthouse on a cliff at dusk"


def run_http(server: Any, engine_id: str, bodies: list[dict[str, Any]], clients: int) -> float:
    path = f"/v1/generation/{engine_id}/text-to-image"
    with server.client() as warm:
        warm.post(path, json=bodies[0]).raise_for_status()  # loads the pipeline
    # Clients are made before the clock starts: making an httpx.Client costs about 30 ms of
    # CPU (its TLS context), which would otherwise be taken from the server's first job.
    sessions = [server.client() for _ in range(clients)]

    def client_run(index: int) -> None:
        for body in bodies[index::clients]:
            sessions[index].post(path, json=body).raise_for_status()

    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            for future in [pool.submit(client_run, i) for i in range(clients)]:
                future.result()
        return time.perf_counter() - started
    finally:
        for session in sessions:
            session.close()


def direct_runner(folder: Path) -> Callable[[list[dict[str, Any]]], float]:
    """The same requests through the diffusers pipeline, one after another, PNG-encoded."""
    import torch
    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler

    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def once(body: dict[str, Any]) -> None:
        image = pipe(
            prompt=PROMPT,
            width=body["width"],
            height=body["height"],
            num_inference_steps=body["steps"],
            guidance_scale=7.0,
            generator=[torch.Generator("cpu").manual_seed(body["seed"])],
        ).images[0]
        image.save(io.BytesIO(), format="PNG")  # the server encodes a PNG too

    def run(bodies: list[dict[str, Any]]) -> float:
        started = time.perf_counter()
        for body in bodies:
            once(body)
        return time.perf_counter() - started

    once({"width": 64, "height": 64, "steps": 2, "seed": 0})  # warm-up
    return run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run with these command-line arguments (default: sys.argv); returns what it wrote."""
    from localstability.testing import run_cli, start_server

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--engine", action="append", help="only these engine ids")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server setting, e.g. trim_memory=false (as LOCALSTABILITY_NAME)",
    )
    args = parser.parse_args(argv)
    settings = dict(item.split("=", 1) for item in args.setting)
    settings = {"batching": "false", **settings}  # the target is without batching
    env = {f"LOCALSTABILITY_{name.upper()}": value for name, value in settings.items()}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        tiny = Path(scratch)
        print("building tiny models...", flush=True)
        run_cli("models", "make-tiny", str(tiny))
        server = start_server(tiny / "localstability.toml", tiny / "server.log", env=env)
        try:
            for engine_id, family, width, height in CASES:
                if args.engine and engine_id not in args.engine:
                    continue
                bodies = [
                    {
                        "text_prompts": [{"text": PROMPT}],
                        "width": width,
                        "height": height,
                        "steps": args.steps,
                        "seed": seed + 1,
                    }
                    for seed in range(args.requests)
                ]
                print(f"{engine_id}: {args.requests} requests, {args.clients} clients", flush=True)
                direct = direct_runner(tiny / family)
                rounds = []
                for number in range(args.rounds):
                    http_s = run_http(server, engine_id, bodies, args.clients)
                    direct_s = direct(bodies)
                    rounds.append(
                        {
                            "http_images_per_s": round(args.requests / http_s, 3),
                            "direct_images_per_s": round(args.requests / direct_s, 3),
                            "ratio": round(direct_s / http_s, 3),
                        }
                    )
                    print(f"  round {number + 1}: {rounds[-1]}", flush=True)
                row = {
                    "engine_id": engine_id,
                    "size": f"{width}x{height}",
                    "steps": args.steps,
                    "requests": args.requests,
                    "clients": args.clients,
                    "median_ratio": statistics.median(r["ratio"] for r in rounds),
                    "rounds": rounds,
                }
                rows.append(row)
                print(f"  median ratio {row['median_ratio']:.3f}", flush=True)
        finally:
            server.stop()
    payload: dict[str, Any] = {
        "benchmark": "throughput: concurrent HTTP clients vs sequential direct calls",
        "models": TINY_MODELS,
        "machine": machine(),
        "settings": settings,
        "results": rows,
    }
    write_results("throughput", payload)
    return payload


if __name__ == "__main__":
    main()
