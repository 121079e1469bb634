"""Time from launching `localstability serve` to its first 200 and to its first image, vs a
fresh Python process that loads the same diffusers pipeline and makes one image.

Each run starts, per engine, a fresh server process on the tiny models with a fresh data dir
(so the time includes creating and migrating the database and writing the first key), polls
GET /v1/engines/list every 20 ms until it answers 200, then sends one text-to-image request,
which loads the pipeline (engines load lazily) and makes the image: the clock stops at its 200.
The baseline, run in the same command right after, is a fresh `python` that imports diffusers,
loads the pipeline from the same folder, makes the same image and saves it as a PNG: the clock
stops when it says so. The figures are medians over the runs and the ratio server / baseline.

    .venv/bin/python -m bench.startup [--runs 3] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import TINY_MODELS, machine, write_results

CASES = [
    # engine id, tiny family folder, width, height
    ("stable-diffusion-v1-6", "sd1", 512, 512),
    ("stable-diffusion-xl-1024-v1-0", "sdxl", 1024, 1024),
]
PROMPT = "a lighthouse on a cliff at dusk"
POLL_S = 0.02
TIMEOUT_S = 300.0

# The baseline: what a script using diffusers directly does from a cold start. The server's
# default sampler (K_DPMPP_2M) is DPMSolverMultistepScheduler, as in bench/latency.py.
BASELINE = """
import sys
import torch
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler

folder, width, height, steps, out, prompt = sys.argv[1:]
pipe = DiffusionPipeline.from_pretrained(folder)
pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)
image = pipe(
    prompt=prompt,
    width=int(width),
    height=int(height),
    num_inference_steps=int(steps),
    guidance_scale=7.0,
    generator=[torch.Generator("cpu").manual_seed(1)],
).images[0]
image.save(out)
print("image saved", flush=True)
"""


@dataclass
class ServerStart:
    first_200_s: float
    first_image_s: float


def time_server(
    config: Path,
    data_dir: Path,
    engine_id: str,
    width: int,
    height: int,
    steps: int,
    log_path: Path,
) -> ServerStart:
    """Launch `localstability serve`, time its first 200 and its first image, stop it."""
    from localstability.testing import CLI, ServerProcess, cli_env, free_port

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    key_file = data_dir / "admin-key.txt"
    started = time.perf_counter()
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*CLI, "serve", "--config", str(config), "--port", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=cli_env(LOCALSTABILITY_DATA_DIR=str(data_dir)),
        )
    server = ServerProcess(base_url, "", config, process, log_path)
    try:
        with httpx.Client(base_url=base_url, timeout=TIMEOUT_S) as http:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"server exited:\n{server.logs()}")
                if time.perf_counter() - started > TIMEOUT_S:
                    raise RuntimeError(f"no 200 from the server:\n{server.logs()}")
                # The first key is written at start-up, before the server listens.
                key = key_file.read_text().strip() if key_file.exists() else ""
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                try:
                    if http.get("/v1/engines/list", headers=headers).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(POLL_S)
            first_200 = time.perf_counter() - started
            body = {
                "text_prompts": [{"text": PROMPT}],
                "width": width,
                "height": height,
                "steps": steps,
                "seed": 1,
            }
            response = http.post(
                f"/v1/generation/{engine_id}/text-to-image", json=body, headers=headers
            )
            first_image = time.perf_counter() - started
            if response.status_code != 200:
                raise RuntimeError(f"text-to-image: {response.status_code} {response.text}")
    finally:
        server.stop()
    return ServerStart(first_200, first_image)


def time_baseline(folder: Path, width: int, height: int, steps: int, out: Path) -> float:
    """Seconds from launching a fresh `python` running BASELINE to its image being saved."""
    from localstability.testing import cli_env

    args = [str(folder), str(width), str(height), str(steps), str(out), PROMPT]
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", BASELINE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    elapsed = time.perf_counter() - started
    _, errors = process.communicate(timeout=TIMEOUT_S)
    if process.returncode != 0 or line.strip() != "image saved":
        raise RuntimeError(f"baseline failed ({process.returncode}):\n{errors}")
    return elapsed


def measure(
    tiny: Path, engine_id: str, family: str, width: int, height: int, steps: int, run: int
) -> dict[str, float]:
    """One run of one engine: the server's start (fresh data dir), then the baseline."""
    scratch = tiny / "startup" / f"{engine_id}-{run}"
    scratch.mkdir(parents=True)
    server = time_server(
        tiny / "localstability.toml",
        scratch / "data",
        engine_id,
        width,
        height,
        steps,
        scratch / "server.log",
    )
    baseline = time_baseline(tiny / family, width, height, steps, scratch / "baseline.png")
    return {
        "first_200_s": server.first_200_s,
        "first_image_s": server.first_image_s,
        "baseline_image_s": baseline,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run with these command-line arguments (default: sys.argv); returns what it wrote."""
    from localstability.testing import run_cli

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--engine", action="append", help="only these engine ids")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        tiny = Path(scratch)
        print("building tiny models...", flush=True)
        run_cli("models", "make-tiny", str(tiny))
        for engine_id, family, width, height in CASES:
            if args.engine and engine_id not in args.engine:
                continue
            runs = []
            for number in range(args.runs):
                runs.append(measure(tiny, engine_id, family, width, height, args.steps, number))
                print(
                    f"{engine_id:32} run {number + 1}: first 200 {runs[-1]['first_200_s']:.2f}s"
                    f"  first image {runs[-1]['first_image_s']:.2f}s"
                    f"  baseline image {runs[-1]['baseline_image_s']:.2f}s",
                    flush=True,
                )
            medians = {
                name: round(statistics.median(run[name] for run in runs), 3) for name in runs[0]
            }
            row = {
                "engine_id": engine_id,
                "size": f"{width}x{height}",
                "steps": args.steps,
                "first_200_median_s": medians["first_200_s"],
                "first_image_median_s": medians["first_image_s"],
                "baseline_image_median_s": medians["baseline_image_s"],
                "ratio": round(medians["first_image_s"] / medians["baseline_image_s"], 3),
                "runs": [{name: round(value, 3) for name, value in run.items()} for run in runs],
            }
            rows.append(row)
            print(
                f"{engine_id:32} median: first 200 {medians['first_200_s']:.2f}s"
                f"  first image {medians['first_image_s']:.2f}s"
                f"  baseline image {medians['baseline_image_s']:.2f}s  ratio {row['ratio']:.3f}",
                flush=True,
            )
    payload: dict[str, Any] = {
        "benchmark": "start-up: launch to first 200 and first image vs a cold diffusers script",
        "models": TINY_MODELS,
        "machine": machine(),
        "runs": args.runs,
        "results": rows,
    }
    write_results("startup", payload)
    return payload


if __name__ == "__main__":
    main()
