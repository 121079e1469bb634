"""Peak resident memory of a server serving three engines in turn, with no budget and under a
budget of two loaded pipelines (`max_loaded_engines = 2`), in the same command.

The engines are three SD 1 engines of the operator's own, each on a folder of its own: the
tiny SD1 with its text encoder widened to about `--text-mb` MB of random float32 weights (the
text encoder runs once per request, so the weights are large and the images stay cheap).
Each scenario starts a fresh server process on them and makes `--rounds` rounds of one
320x320 text-to-image per engine (A, B, C, A, B, C...); the figures are the server process's
peak resident set size (VmHWM, measured by the kernel) and its resident size at the end, the
pipelines it held at the end and the bytes they hold (its /metrics gauges), its loads and
unloads, and the scenario's wall time (reloads cost time: the budget trades time for memory).

    .venv/bin/python -m bench.memory_budget [--rounds 2] [--text-mb 400]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import machine, write_results
from bench.memory import peak_rss_mib

ENGINES = ["house-a", "house-b", "house-c"]
BODY = {"text_prompts": [{"text": "a lighthouse"}], "steps": 10, "width": 320, "height": 320}


def heavy_copy(tiny_sd1: Path, dest: Path, text_mb: int, seed: int) -> None:
    """The tiny SD1 folder at `dest`, its text encoder widened (MLP) to about `text_mb` MB."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    shutil.copytree(tiny_sd1, dest)
    config = json.loads((tiny_sd1 / "text_encoder" / "config.json").read_text())
    layers = config["num_hidden_layers"]
    # Each layer's MLP holds 2 x hidden x intermediate float32 weights.
    config["intermediate_size"] = text_mb * 2**20 // (4 * 2 * config["hidden_size"] * layers)
    torch.manual_seed(seed)
    model = CLIPTextModel(CLIPTextConfig(**config))
    shutil.rmtree(dest / "text_encoder")
    model.save_pretrained(dest / "text_encoder")


def metric(text: str, name: str) -> float:
    """The sum of a metric's samples in a /metrics answer."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc status")


def scenario(config: Path, budget: int, rounds: int) -> dict[str, Any]:
    import httpx

    from localstability.testing import start_server

    name = f"budget-{budget}" if budget else "no-budget"
    data_dir = config.parent / name
    server = start_server(
        config,
        config.parent / f"{name}.log",
        LOCALSTABILITY_DATA_DIR=str(data_dir),
        LOCALSTABILITY_MAX_LOADED_ENGINES=str(budget),
    )
    try:
        began = time.perf_counter()
        with server.client() as client:
            for _ in range(rounds):
                for engine in ENGINES:
                    answer = client.post(f"/v1/generation/{engine}/text-to-image", json=BODY)
                    answer.raise_for_status()
        took = time.perf_counter() - began
        text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
        return {
            "max_loaded_engines": budget,
            "peak_rss_mib": round(peak_rss_mib(server.process.pid), 1),
            "end_rss_mib": round(rss_mib(server.process.pid), 1),
            "pipelines_loaded_at_end": metric(text, "localstability_pipelines_loaded"),
            "pipelines_bytes_at_end_mib": round(
                metric(text, "localstability_pipelines_loaded_bytes") / 2**20, 1
            ),
            "loads": metric(text, "localstability_model_load_seconds_count"),
            "unloads": metric(text, "localstability_pipeline_unloads_total"),
            "wall_s": round(took, 2),
        }
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run with these command-line arguments (default: sys.argv); returns what it wrote."""
    from localstability.testing import run_cli

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--text-mb", type=int, default=400)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        tiny = Path(scratch)
        print("building tiny models...", flush=True)
        run_cli("models", "make-tiny", str(tiny))
        config = tiny / "localstability.toml"
        text = config.read_text()
        for seed, engine in enumerate(ENGINES):
            heavy_copy(tiny / "sd1", tiny / engine, args.text_mb, seed)
            text += f'\n[engines.{engine}]\nsource = "{tiny / engine}"\nfamily = "sd1"\n'
        config.write_text(text)
        results = []
        for budget in (0, 2):
            result = scenario(config, budget, args.rounds)
            print(json.dumps(result), flush=True)
            results.append(result)
    unbounded, bounded = results
    payload: dict[str, Any] = {
        "benchmark": "peak RSS, three engines in turn: no budget vs max_loaded_engines = 2",
        "models": f"three copies of the tiny SD1, each text encoder ~{args.text_mb} MB (random)",
        "machine": machine(),
        "rounds": args.rounds,
        "text_mb": args.text_mb,
        "size": "320x320",
        "steps": BODY["steps"],
        "results": results,
        "peak_rss_saved_mib": round(unbounded["peak_rss_mib"] - bounded["peak_rss_mib"], 1),
    }
    write_results("pipeline-budget", payload)
    return payload


if __name__ == "__main__":
    main()
