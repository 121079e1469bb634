"""The benchmark runner's plumbing (`python -m bench`), without running real benchmarks.

The real benchmarks take minutes to half an hour (`python -m bench`, not part of the tests);
here each module's main() is replaced by one that returns a payload shaped like its result
file. No figure is checked against a target.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import bench
import pytest
from bench import __main__ as runner
from bench import startup

from tests.conftest import REPO

LATENCY = {
    "repeats": 5,
    "results": [
        {
            "engine_id": "stable-diffusion-v1-6",
            "size": "512x512",
            "steps": 30,
            "http_median_s": 0.7385,
            "direct_median_s": 0.7932,
            "ratio": 0.931,
        },
        {
            "engine_id": "stable-diffusion-xl-1024-v1-0",
            "size": "1024x1024",
            "steps": 30,
            "http_median_s": 2.6519,
            "direct_median_s": 2.3823,
            "ratio": 1.113,
        },
    ],
}
THROUGHPUT = {
    "results": [
        {
            "engine_id": "stable-diffusion-v1-6",
            "size": "512x512",
            "steps": 20,
            "requests": 16,
            "clients": 16,
            "median_ratio": 0.954,
            "rounds": [
                {"http_images_per_s": 1.38, "direct_images_per_s": 1.43, "ratio": 0.97},
                {"http_images_per_s": 1.35, "direct_images_per_s": 1.26, "ratio": 1.069},
                {"http_images_per_s": 1.23, "direct_images_per_s": 1.32, "ratio": 0.934},
            ],
        }
    ]
}


def memory(engine_id: str) -> dict[str, Any]:
    size = "1024x1024" if "xl" in engine_id else "512x512"
    return {
        "engine_id": engine_id,
        "size": size,
        "repeats": 2,
        "text_to_image_peak_rss_mib": 1060.2,
        "all_three_peak_rss_mib": 1131.1,
        "ratio": 1.067,
    }


BATCHING = {
    "steps": 20,
    "rounds": 3,
    "http": "16 clients, 16 requests; batching off vs on",
    "results": [
        {
            "engine_id": "stable-diffusion-v1-6",
            "size": "512x512",
            "pipeline": [
                {"batch": 2, "gain": 1.177, "max_pixel_difference": 1, "pixels_differing": 8e-05},
                {"batch": 4, "gain": 1.324, "max_pixel_difference": 1, "pixels_differing": 1e-04},
            ],
            "http": {"median_gain": 1.242, "rounds": []},
        },
        {
            "engine_id": "stable-diffusion-xl-1024-v1-0",
            "size": "1024x1024",
            "pipeline": [
                {"batch": 2, "gain": 0.98, "max_pixel_difference": 0, "pixels_differing": 0.0},
                {"batch": 4, "gain": 0.95, "max_pixel_difference": 0, "pixels_differing": 0.0},
            ],
        },
    ],
}


def startup_row(engine_id: str, size: str, image: float, baseline: float) -> dict[str, Any]:
    return {
        "engine_id": engine_id,
        "size": size,
        "steps": 10,
        "first_200_median_s": 2.3,
        "first_image_median_s": image,
        "baseline_image_median_s": baseline,
        "ratio": round(image / baseline, 3),
        "runs": [{"first_200_s": 2.3, "first_image_s": image, "baseline_image_s": baseline}],
    }


STARTUP = {
    "runs": 1,
    "results": [
        {
            **startup_row("stable-diffusion-v1-6", "512x512", 7.23, 5.57),
            "preloaded_median_s": 6.4,
            "preload_first_request_median_s": 0.83,
            "preload_second_request_median_s": 0.81,
        },
        startup_row("stable-diffusion-xl-1024-v1-0", "1024x1024", 23.7, 27.63),
    ],
}


def method(psnr: float, ssim: float, edges: float) -> dict[str, float]:
    return {"psnr_db": psnr, "ssim": ssim, "edge_energy_ratio": edges}


UPSCALE = {
    "conversion": {
        "realesrgan-x4plus": {"ncnn_max_abs_diff": 5.27e-06},
        "realesr-animevideov3-x4": {"ncnn_max_abs_diff": 4.44e-06},
    },
    "quality": [
        {
            "image": "astronaut.png",
            "bicubic": method(23.72, 0.7217, 0.6),
            "realesrgan-x4plus": method(21.84, 0.6953, 1.019),
        }
    ],
    "quality_degraded_input": {
        "bicubic": {"psnr_db": 24.08, "ssim": 0.627},
        "realesrgan-x4plus": {"psnr_db": 24.71, "ssim": 0.647},
    },
    "tiling": [
        {"model": "realesrgan-x4plus", "overlap": 16, "max_abs_diff_uint8": 20},
        {"model": "realesrgan-x4plus", "overlap": 64, "max_abs_diff_uint8": 1},
        {"model": "realesr-animevideov3-x4", "overlap": 18, "max_abs_diff_uint8": 1},
    ],
    "timings": [{"model": "realesrgan-x4plus", "median_s": 2.7}],
}
SCALEOUT = {
    "engine_id": "stable-diffusion-v1-6",
    "size": "512x512",
    "steps": 10,
    "throughput": {
        "requests": 12,
        "one_worker_images_per_s": 1.356,
        "two_workers_images_per_s": 2.199,
        "ratio": 1.622,
    },
    "latency": {
        "requests": 8,
        "celery_p50_ms": 795.4,
        "embedded_p50_ms": 963.4,
        "added_p50_ms": -168.0,
    },
    "recovery": {"engine_id": "stable-diffusion-xl-1024-v1-0", "kill_to_images_s": 13.77},
    "replica": {
        "start_s": 1.92,
        "rss_mib": 146.6,
        "embedded_start_s": 4.96,
        "embedded_rss_mib_after_first_image": 955.7,
    },
    "worker_batching": {
        "requests": 12,
        "one_worker_images_per_s": 1.356,
        "one_worker_batched_images_per_s": 1.712,
        "ratio": 1.263,
    },
}
LORAS = {
    "in_process": [
        {
            "family": "sd1",
            "base_load_s": 0.61,
            "adapter_first_load_s": 0.19,
            "adapter_switch_s": 0.0042,
            "lora_off_s": 0.0012,
            "switch_vs_base_load": 0.0069,
            "first_load_vs_base_load": 0.31,
        }
    ],
    "http": {
        "engine_id": "stable-diffusion-v1-6",
        "size": "320x320",
        "steps": 10,
        "requests_each": 10,
        "no_adapter_median_s": 0.52,
        "same_adapter_median_s": 0.54,
        "alternating_adapters_median_s": 0.55,
        "ratio": 1.058,
        "alternating_vs_same_adapter": 1.019,
        "base_model_loads_during": 0.0,
    },
}
BUDGET = {
    "rounds": 2,
    "text_mb": 400,
    "size": "320x320",
    "steps": 10,
    "results": [
        {
            "max_loaded_engines": 0,
            "peak_rss_mib": 2716.4,
            "end_rss_mib": 2300.0,
            "pipelines_loaded_at_end": 3.0,
            "pipelines_bytes_at_end_mib": 1210.2,
            "loads": 3.0,
            "unloads": 0.0,
            "wall_s": 40.5,
        },
        {
            "max_loaded_engines": 2,
            "peak_rss_mib": 2310.9,
            "end_rss_mib": 1900.0,
            "pipelines_loaded_at_end": 2.0,
            "pipelines_bytes_at_end_mib": 806.8,
            "loads": 6.0,
            "unloads": 4.0,
            "wall_s": 61.2,
        },
    ],
}
SAFETY = {
    "benchmark": "safety",
    "in_process": {
        "classifier": "nudenet 3.4.2 (320n.onnx)",
        "load_s": 0.09,
        "photo_512": {"median_s": 0.021, "flagged": True},
        "photo_1024": {"median_s": 0.035, "flagged": True},
        "noise_512": {"median_s": 0.019, "flagged": False},
    },
    "http": [
        {
            "engine_id": "stable-diffusion-v1-6",
            "size": "512x512",
            "steps": 10,
            "filter_off_median_s": 0.42,
            "filter_on_median_s": 0.45,
            "ratio": 1.071,
        }
    ],
}
PAYLOADS: dict[str, Any] = {
    "latency": LATENCY,
    "throughput": THROUGHPUT,
    "memory_budget": BUDGET,
    "batching": BATCHING,
    "startup": STARTUP,
    "scaleout": SCALEOUT,
    "loras": LORAS,
    "safety": SAFETY,
    "upscale_quality": UPSCALE,
}


def fake_main(name: str, calls: list[tuple[str, list[str]]]) -> Any:
    """A stand-in for bench.NAME.main: records its arguments, writes and returns a payload."""

    def main(argv: list[str] | None = None) -> dict[str, Any]:
        args = list(argv or [])
        calls.append((name, args))
        if name == "memory":
            payload = memory(args[args.index("--engine") + 1])
            bench.write_results(f"memory-{payload['engine_id']}", payload)
        else:
            payload = PAYLOADS[name]
            bench.write_results(runner.BY_NAME[name].result, payload)
        return payload

    return main


def sample_summary() -> dict[str, Any]:
    figures = {name: runner.BY_NAME[name].figures([payload]) for name, payload in PAYLOADS.items()}
    figures["memory"] = runner.memory_figures([memory(e) for e in runner.MEMORY_ENGINES])
    return {
        "date": "2026-11-26",
        "command": "python -m bench",
        "quick": False,
        "total_s": 2400.0,
        "file": "bench/results/all-2026-11-26.json",
        "machine": {"arch": "x86_64", "cpus": 2, "description": "x86_64, cpu, CPU only"},
        "models": bench.TINY_MODELS,
        "benchmarks": {name: {"figures": f} for name, f in figures.items()},
    }


def test_help_lists_the_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for option in ("--quick", "--only", "--out", "--readme-from", "--collect"):
        assert option in result.stdout


def test_every_benchmark_module_has_a_main_taking_arguments() -> None:
    for benchmark in runner.BENCHMARKS:
        module = importlib.import_module(f"bench.{benchmark.name}")
        assert "argv" in inspect.signature(module.main).parameters, benchmark.name


def test_table_rows_carry_the_headline_figures() -> None:
    table = runner.render_table(sample_summary())
    lines = table.splitlines()
    assert lines[0].startswith("Latest run: `python -m bench` on 2026-11-26, 40 min in all")
    assert "x86_64, 2 cores, CPU only" in lines[0]
    assert lines[2:4] == ["| benchmark | figures |", "|---|---|"]
    rows = {line.split("`")[1]: line for line in lines[4:]}
    assert list(rows) == [f"python -m bench.{b.name}" for b in runner.BENCHMARKS]
    assert all(row.startswith("| `") and row.endswith(" |") for row in rows.values())
    assert all(row.count(" | ") == 1 for row in rows.values())  # two cells
    latency = rows["python -m bench.latency"]
    assert "median of 5, 30 steps" in latency
    assert "SD1 512: 0.93x (0.74 s vs 0.79 s)" in latency
    assert "SDXL 1024: 1.11x" in latency
    throughput = rows["python -m bench.throughput"]
    assert "16 concurrent HTTP clients" in throughput and "median of 3 alternating" in throughput
    assert "SD1 512: 0.954x (rounds 0.93-1.07)" in throughput
    memory_row = rows["python -m bench.memory"]
    assert "SD1 512: 1.067x (1060 -> 1131 MiB)" in memory_row
    assert "SD2 512" in memory_row and "SDXL 1024" in memory_row
    batching = rows["python -m bench.batching"]
    assert "batch of 2 / 4: SD1 512 1.18x / 1.32x, SDXL 1024 0.98x / 0.95x" in batching
    assert "HTTP: SD1 1.24x;" in batching
    assert "within 1/255 of their solo runs on at most 0.01 % of the pixels" in batching
    startup_text = rows["python -m bench.startup"]
    assert "first 200: 2.3 s" in startup_text
    assert "SD1 512: 7.2 s vs 5.6 s (1.30x)" in startup_text
    assert "SDXL 1024: 23.7 s vs 27.6 s (0.86x)" in startup_text
    assert (
        "; preloaded SD1 512: preload done 6.4 s after launch, then the first image request "
        "0.8 s (the second 0.8 s)"
    ) in startup_text
    assert "preloaded SDXL" not in startup_text
    budget = rows["python -m bench.memory_budget"]
    assert "no budget vs `max_loaded_engines = 2`, 2 rounds, 10 steps" in budget
    assert "peak RSS 2716 -> 2311 MiB; pipelines held at the end 3 -> 2 (1210 -> 807 MiB)" in budget
    assert "loads 3 -> 6, unloads 4; wall time 40.5 -> 61.2 s" in budget
    scaleout = rows["python -m bench.scaleout"]
    assert "two workers 1.62x one (2.20 vs 1.36 img/s)" in scaleout
    assert "latency added by the celery path -168 ms" in scaleout
    assert "images 13.8 s later from another" in scaleout
    assert "API replica start 1.9 s and 147 MiB vs the embedded server's 5.0 s and 956 MiB" in (
        scaleout
    )
    assert "one worker batching the queued jobs 1.26x without (1.71 vs 1.36 img/s)" in scaleout
    safety = rows["python -m bench.safety"]
    assert "a 512x512 image in 21 ms (1024x1024: 35 ms)" in safety
    assert "SD1 512: 1.071x (0.450 s vs 0.420 s)" in safety
    loras = rows["python -m bench.loras"]
    assert "SD1: switch 4.2 ms, first load 190 ms vs base model load 610 ms (0.0069x)" in loras
    assert "HTTP SD1 320, 10 steps: alternating 1.02x one adapter, 1.06x none" in loras
    assert "(0.55 s vs 0.54 s vs 0.52 s)" in loras
    assert "base model loads meanwhile: 0" in loras
    upscale = rows["python -m bench.upscale_quality"]
    assert "conversion matches ncnn to 5e-6" in upscale
    assert "x4plus 21.84 dB / 0.695 vs bicubic 23.72 dB / 0.722" in upscale
    assert "edges 1.02 vs 0.60" in upscale
    assert "32 px tiles (overlap 64) within 1/255 of untiled" in upscale


def test_missing_and_failed_benchmarks_keep_their_row() -> None:
    summary = sample_summary()
    del summary["benchmarks"]["startup"]
    summary["benchmarks"]["memory"] = {"error": "RuntimeError: server exited:\nlog | lines"}
    table = runner.render_table(summary)
    assert "| `python -m bench.startup`: time from launching" in table
    assert "| not run yet |" in table
    assert "| failed: RuntimeError: server exited: |" in table


def test_readme_table_is_replaced_between_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    before, after = "# title\n\n## Benchmarks\n\nintro\n\n", "\n\nnotes\n\n## CLI\n"
    readme.write_text(f"{before}{runner.START}\nold table\n{runner.END}{after}")
    summary = sample_summary()
    runner.update_readme(summary, readme)
    runner.update_readme(summary, readme)  # idempotent
    expected = f"{before}{runner.START}\n{runner.render_table(summary)}\n{runner.END}{after}"
    assert readme.read_text() == expected
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit):
        runner.update_readme(summary, readme)


def test_the_repository_readme_has_the_markers() -> None:
    text = (REPO / "README.md").read_text()
    assert text.count(runner.START) == 1 and text.count(runner.END) == 1
    assert text.index(runner.START) < text.index(runner.END)


def test_quick_run_calls_each_main_and_writes_one_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, list[str]]] = []
    for benchmark in runner.BENCHMARKS:
        module = importlib.import_module(f"bench.{benchmark.name}")
        monkeypatch.setattr(module, "main", fake_main(benchmark.name, calls))
    readme = tmp_path / "README.md"
    readme.write_text(f"{runner.START}\n{runner.END}\n")
    monkeypatch.setattr(runner, "README", readme)
    monkeypatch.delenv(bench.RESULTS_ENV, raising=False)
    out = tmp_path / "out"
    assert runner.main(["--quick", "--out", str(out)]) == 0
    assert bench.RESULTS_ENV not in os.environ  # restored
    assert [name for name, _ in calls] == [b.name for b in runner.BENCHMARKS for _ in b.runs]
    assert ("latency", ["--repeats", "1", "--steps", "10"]) in calls
    summary = json.loads((out / f"all-quick-{bench.today()}.json").read_text())
    assert summary["quick"] is True
    assert list(summary["benchmarks"]) == list(runner.BY_NAME)
    assert all(entry["figures"] for entry in summary["benchmarks"].values())
    assert summary["benchmarks"]["memory"]["files"] == [
        f"memory-{engine}-{bench.today()}.json" for engine in runner.MEMORY_ENGINES
    ]
    for entry in summary["benchmarks"].values():
        for name in entry["files"]:
            assert (out / name).is_file()
    assert {"cpus", "python", "torch"} <= set(summary["machine"])
    assert readme.read_text() == f"{runner.START}\n{runner.END}\n"  # quick: README untouched
    runner.main(["--readme-from", str(out / f"all-quick-{bench.today()}.json")])
    assert "`python -m bench --quick --out" in readme.read_text()


def test_a_failing_benchmark_does_not_stop_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, list[str]]] = []

    def broken(argv: list[str] | None = None) -> dict[str, Any]:
        raise RuntimeError("no server")

    monkeypatch.setattr(startup, "main", broken)
    latency = importlib.import_module("bench.latency")
    monkeypatch.setattr(latency, "main", fake_main("latency", calls))
    out = tmp_path / "out"
    code = runner.main(["--quick", "--only", "startup", "latency", "--out", str(out)])
    assert code == 1
    summary = json.loads((out / f"all-quick-{bench.today()}.json").read_text())
    assert summary["benchmarks"]["startup"]["error"] == "RuntimeError: no server"
    assert summary["benchmarks"]["latency"]["figures"]["engines"]


def test_quick_runs_never_write_to_bench_results() -> None:
    with pytest.raises(SystemExit):
        runner.main(["--quick", "--out", str(bench.RESULTS)])
