"""What a LoRA adapter costs: switching adapters between jobs vs loading the base model.

Two parts, on the tiny models and the tiny adapters of `models make-tiny`:

- In this process, per family (SD1, SDXL): the time to load the base pipeline from its folder
  (what a server would pay if an adapter change reloaded the model), the time to load an
  adapter file onto the loaded pipeline the first time, and the time to switch between two
  adapters already loaded (and to switch LoRA off): `inference.lora.activate`, the function
  each job runs before its pipeline call. Medians over the repeats.
- Through our HTTP server (SD 1.6 on the tiny SD1, 320x320), in alternating rounds: requests
  with no adapter, requests that all name the same adapter (what an adapter's layers cost each
  step), and requests that alternate between two adapters (that, plus a switch before each);
  the median latency of each, the ratios, and the server's model-load counter before and after
  (it must not move: no base reload).

    .venv/bin/python -m bench.loras [--repeats 5] [--steps 10]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import finish, repeats_and_steps

FAMILIES = {"sd1": ("tiny-sd1-style", "tiny-sd1-detail"), "sdxl": ("tiny-sdxl-style", None)}
ENGINE = "stable-diffusion-v1-6"
LOADS = "localstability_model_load_seconds_count"


def median_s(action: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        action()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def in_process(tiny: Path, family: str, repeats: int) -> dict[str, Any]:
    """Base load vs first adapter load vs switching, on one family's tiny pipeline."""
    import torch

    from localstability.engines import Family
    from localstability.inference import lora
    from localstability.inference.loader import WeightSource, load_pipeline

    source = WeightSource("bench", Family(family), str(tiny / family))

    def load() -> Any:
        return load_pipeline(source, "cpu", torch.float32, offline=True)

    first, second = FAMILIES[family]
    adapter = lora.Adapter(first, str(tiny / "loras" / family / f"{first}.safetensors"), 1.0)
    load()  # the first load also imports the pipeline's modules: not timed
    base_s = median_s(load, repeats)
    pipes = [load() for _ in range(repeats)]
    first_load = []
    for pipe in pipes:
        began = time.perf_counter()
        lora.activate(pipe, [adapter])
        first_load.append(time.perf_counter() - began)
    pipe = pipes[0]
    others = [[adapter, lora.Adapter(first, adapter.file, 0.5)]]
    if second:
        others.append([lora.Adapter(second, adapter.file.replace(first, second), 1.0)])
    for choice in others:  # each loaded once before the switches are timed
        lora.activate(pipe, choice)
    turn = iter(range(10**9))
    switch_s = median_s(lambda: lora.activate(pipe, others[next(turn) % len(others)]), repeats)
    off_s = median_s(lambda: lora.activate(pipe, []), repeats)
    first_s = statistics.median(first_load)
    return {
        "family": family,
        "base_load_s": round(base_s, 4),
        "adapter_first_load_s": round(first_s, 4),
        "adapter_switch_s": round(switch_s, 5),
        "lora_off_s": round(off_s, 5),
        "switch_vs_base_load": round(switch_s / base_s, 5),
        "first_load_vs_base_load": round(first_s / base_s, 4),
    }


def through_http(tiny: Path, repeats: int, steps: int) -> dict[str, Any]:
    """Alternating adapters vs none, through the server; the model-load counter around it."""
    from prometheus_client.parser import text_string_to_metric_families

    from localstability.testing import start_server

    def loads(base_url: str) -> float:
        import httpx

        text = httpx.get(f"{base_url}/metrics", timeout=30).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == LOADS and sample.labels.get("engine") == ENGINE
        )

    server = start_server(tiny / "localstability.toml", tiny / "server.log")
    first, second = FAMILIES["sd1"]
    path = f"/v1/generation/{ENGINE}/text-to-image"
    try:
        with server.client() as client:

            def post(loras: list[dict[str, Any]] | None) -> float:
                body: dict[str, Any] = {
                    "text_prompts": [{"text": "a lighthouse on a cliff"}],
                    "width": 320,
                    "height": 320,
                    "steps": steps,
                    "seed": 1,
                }
                if loras is not None:
                    body["loras"] = loras
                began = time.perf_counter()
                answer = client.post(path, json=body)
                elapsed = time.perf_counter() - began
                if answer.status_code != 200:
                    raise RuntimeError(f"{answer.status_code} {answer.text}")
                return elapsed

            for warm in (None, [{"name": first}], [{"name": second}]):
                post(warm)  # the base model and both adapters loaded before timing
            loads_before = loads(server.base_url)
            plain, same, switching = [], [], []
            for index in range(repeats * 2):  # alternating rounds, so drift hits all three
                plain.append(post(None))
                same.append(post([{"name": first}]))
                switching.append(post([{"name": (first, second)[index % 2]}]))
            loads_after = loads(server.base_url)
    finally:
        server.stop()
    plain_s, switching_s = statistics.median(plain), statistics.median(switching)
    same_s = statistics.median(same)
    return {
        "engine_id": ENGINE,
        "size": "320x320",
        "steps": steps,
        "requests_each": len(plain),
        "no_adapter_median_s": round(plain_s, 4),
        "same_adapter_median_s": round(same_s, 4),
        "alternating_adapters_median_s": round(switching_s, 4),
        "ratio": round(switching_s / plain_s, 3),
        "alternating_vs_same_adapter": round(switching_s / same_s, 3),
        "base_model_loads_during": loads_after - loads_before,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run with these command-line arguments (default: sys.argv); returns what it wrote."""
    from localstability.testing import run_cli

    args = repeats_and_steps(argv, __doc__)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-loras-") as scratch:
        tiny = Path(scratch) / "tiny"
        print("building the tiny models and adapters", flush=True)
        run_cli("models", "make-tiny", str(tiny))
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()  # the loads timed in this process
        transformers_logging.disable_progress_bar()
        rows = []
        for family in FAMILIES:
            print(f"in process: {family}", flush=True)
            rows.append(in_process(tiny, family, args.repeats))
        print("through HTTP", flush=True)
        http = through_http(tiny, args.repeats, args.steps)
    return finish("loras", began, repeats=args.repeats, in_process=rows, http=http)


if __name__ == "__main__":
    main()
