"""Time from launching `localstability serve` to its first 200 and to its first image, vs a
fresh Python process that loads the same diffusers pipeline and makes one image.

Each run starts, per engine, a fresh server process on the tiny models with a fresh data dir
(so the time includes creating and migrating the database and writing the first key), polls
GET /v1/engines/list every 20 ms until it answers 200, then sends one text-to-image request,
which loads the pipeline (engines load lazily) and makes the image: the clock stops at its 200.
The baseline, run in the same command right after, is a fresh `python` that imports diffusers,
loads the pipeline from the same folder, makes the same image and saves it as a PNG: the clock
stops when it says so. The figures are medians over the runs and the ratio server / baseline.

With --preload, each run also launches a server with `preload = [the engine]`: its first 200,
the time from launch until /metrics counts the engine's load (the preload's end), then its
first and second image requests, each timed alone: equal when the first image costs no load.

    .venv/bin/python -m bench.startup [--runs 3] [--steps 10] [--preload]
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
    # With --preload: launch to the preload's end (its load counted on /metrics), and the
    # first and the second image request alone, sent after it.
    preloaded_s: float | None = None
    first_request_s: float | None = None
    second_request_s: float | None = None


def wait_for_preload(http: httpx.Client, engine_id: str, started: float) -> float:
    """Seconds from launch until /metrics counts the engine's load (its preload)."""
    count = f'localstability_model_load_seconds_count{{engine="{engine_id}"}}'
    while time.perf_counter() - started < TIMEOUT_S:
        if any(line.startswith(count) for line in http.get("/metrics").text.splitlines()):
            return time.perf_counter() - started
        time.sleep(POLL_S)
    raise RuntimeError(f"{engine_id} was not preloaded")


def time_server(
    config: Path,
    data_dir: Path,
    engine_id: str,
    width: int,
    height: int,
    steps: int,
    log_path: Path,
    preload: bool = False,
) -> ServerStart:
    """Launch `localstability serve`, time its first 200 and its first image, stop it. With
    `preload`, the engine is preloaded and the image requests are sent once it is."""
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
            env=cli_env(
                LOCALSTABILITY_DATA_DIR=str(data_dir),
                LOCALSTABILITY_PRELOAD=f'["{engine_id}"]' if preload else "[]",
            ),
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
            preloaded = wait_for_preload(http, engine_id, started) if preload else None
            body = {
                "text_prompts": [{"text": PROMPT}],
                "width": width,
                "height": height,
                "steps": steps,
                "seed": 1,
            }
            requests = []
            for _ in range(2 if preload else 1):
                sent = time.perf_counter()
                response = http.post(
                    f"/v1/generation/{engine_id}/text-to-image", json=body, headers=headers
                )
                requests.append(time.perf_counter() - sent)
                if response.status_code != 200:
                    raise RuntimeError(f"text-to-image: {response.status_code} {response.text}")
                if len(requests) == 1:
                    first_image = time.perf_counter() - started
    finally:
        server.stop()
    if not preload:
        return ServerStart(first_200, first_image)
    return ServerStart(first_200, first_image, preloaded, requests[0], requests[1])


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
    tiny: Path,
    engine_id: str,
    family: str,
    width: int,
    height: int,
    steps: int,
    run: int,
    preload: bool = False,
) -> dict[str, float]:
    """One run of one engine: the server's start (fresh data dir), with `preload` a second
    server's that preloads the engine, then the baseline."""
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
    figures = {"first_200_s": server.first_200_s, "first_image_s": server.first_image_s}
    if preload:
        warm = time_server(
            tiny / "localstability.toml",
            scratch / "data-preload",
            engine_id,
            width,
            height,
            steps,
            scratch / "server-preload.log",
            preload=True,
        )
        assert warm.preloaded_s is not None and warm.first_request_s is not None
        assert warm.second_request_s is not None
        figures.update(
            preload_first_200_s=warm.first_200_s,
            preloaded_s=warm.preloaded_s,
            preload_first_request_s=warm.first_request_s,
            preload_second_request_s=warm.second_request_s,
        )
    figures["baseline_image_s"] = time_baseline(
        tiny / family, width, height, steps, scratch / "baseline.png"
    )
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run with these command-line arguments (default: sys.argv); returns what it wrote."""
    from localstability.testing import run_cli

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--engine", action="append", help="only these engine ids")
    parser.add_argument(
        "--preload",
        action="store_true",
        help="also time a server that preloads the engine: launch to the preload's end, and "
        "its first and second image requests, sent after it",
    )
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
                runs.append(
                    measure(
                        tiny, engine_id, family, width, height, args.steps, number, args.preload
                    )
                )
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
                **(
                    {
                        "preloaded_median_s": medians["preloaded_s"],
                        "preload_first_request_median_s": medians["preload_first_request_s"],
                        "preload_second_request_median_s": medians["preload_second_request_s"],
                    }
                    if args.preload
                    else {}
                ),
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
