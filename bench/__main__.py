"""Run every benchmark, one after another, and write one dated summary.

    .venv/bin/python -m bench [--quick] [--only NAME ...] [--out DIR] [--no-readme]
    .venv/bin/python -m bench --readme-from bench/results/all-YYYY-MM-DD.json
    .venv/bin/python -m bench --collect

A full run (`make bench`) runs latency, throughput, memory (once per engine), memory_budget,
batching, startup, scaleout, loras, safety and upscale_quality with their full settings
(BENCHMARKS below), writes each one's own dated file and the summary
bench/results/all-YYYY-MM-DD.json (each benchmark's headline figures, its arguments and time,
the machine, the total time), then rewrites the README's benchmark table (between the
bench:start / bench:end markers) from that summary.

--quick runs each with one repeat and 10 steps (throughput and batching on SD1 only), as a
smoke check of the whole chain (its figures mean nothing); it writes to a new temporary folder,
never to bench/results/, and leaves the README alone. --collect rebuilds the README table from
the newest result file of each benchmark in bench/results/ (for a benchmark rerun alone)
without running anything.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import RESULTS, RESULTS_ENV, TINY_MODELS, machine, today

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
MEMORY_ENGINES = [
    "stable-diffusion-v1-6",
    "stable-diffusion-512-v2-1",
    "stable-diffusion-xl-1024-v1-0",
]
LABELS = {
    "stable-diffusion-v1-6": "SD1",
    "stable-diffusion-512-v2-1": "SD2",
    "stable-diffusion-xl-1024-v1-0": "SDXL",
    "localstability-shapes-v1": "shapes",
}
Figures = dict[str, Any]


@dataclass(frozen=True)
class Run:
    """One call of a benchmark module's main() with its full and its --quick arguments."""

    full: list[str]
    quick: list[str]


@dataclass(frozen=True)
class Benchmark:
    name: str  # the module in bench/
    result: str  # the name its result files start with (NAME-YYYY-MM-DD.json)
    title: str  # what it measures, for a README row without figures
    runs: list[Run]  # memory: one per engine
    figures: Callable[[list[dict[str, Any]]], Figures]  # headline figures from its results
    row: Callable[[Figures], tuple[str, str]]  # README: (what it measures, figures)


def label(engine_id: str, size: str) -> str:
    """`SD1 512`, `SDXL 1024` (square sizes) or `SD1 512x768`."""
    width, _, height = size.partition("x")
    return f"{LABELS.get(engine_id, engine_id)} {width if width == height else size}"


def x(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}x"


# --- headline figures, from the payloads each main() returns (and writes) ---------------------


def latency_figures(payloads: list[dict[str, Any]]) -> Figures:
    rows = payloads[0]["results"]
    return {
        "repeats": payloads[0]["repeats"],
        "steps": rows[0]["steps"],
        "engines": {
            row["engine_id"]: {
                key: row[key] for key in ("size", "http_median_s", "direct_median_s", "ratio")
            }
            for row in rows
        },
    }


def throughput_figures(payloads: list[dict[str, Any]]) -> Figures:
    rows = payloads[0]["results"]
    return {
        "requests": rows[0]["requests"],
        "clients": rows[0]["clients"],
        "rounds": len(rows[0]["rounds"]),
        "steps": rows[0]["steps"],
        "engines": {
            row["engine_id"]: {
                "size": row["size"],
                "median_ratio": row["median_ratio"],
                "round_ratios": [
                    min(r["ratio"] for r in row["rounds"]),
                    max(r["ratio"] for r in row["rounds"]),
                ],
                "http_images_per_s": statistics.median(
                    r["http_images_per_s"] for r in row["rounds"]
                ),
            }
            for row in rows
        },
    }


def memory_figures(payloads: list[dict[str, Any]]) -> Figures:
    return {
        "repeats": payloads[0]["repeats"],
        "engines": {
            payload["engine_id"]: {
                "size": payload["size"],
                "text_to_image_mib": payload["text_to_image_peak_rss_mib"],
                "all_three_mib": payload["all_three_peak_rss_mib"],
                "ratio": payload["ratio"],
            }
            for payload in payloads
        },
    }


def batching_figures(payloads: list[dict[str, Any]]) -> Figures:
    payload = payloads[0]
    rows = payload["results"]
    first_http = next((row["http"] for row in rows if "http" in row), None)
    pipeline = [part for row in rows for part in row["pipeline"]]
    return {
        # Files written before "steps" and "rounds" were recorded: 20 steps, and the rounds
        # can be counted from the HTTP part.
        "steps": payload.get("steps", 20),
        "rounds": payload.get("rounds", len(first_http["rounds"]) if first_http else None),
        "http": payload["http"],
        "engines": {
            row["engine_id"]: {
                "size": row["size"],
                "pipeline_gain": {str(part["batch"]): part["gain"] for part in row["pipeline"]},
                "http_gain": row["http"]["median_gain"] if "http" in row else None,
            }
            for row in rows
        },
        "max_pixel_difference": max(part["max_pixel_difference"] for part in pipeline),
        "pixels_differing": max(part["pixels_differing"] for part in pipeline),
    }


def startup_figures(payloads: list[dict[str, Any]]) -> Figures:
    rows = payloads[0]["results"]
    return {
        "runs": payloads[0]["runs"],
        "steps": rows[0]["steps"],
        # Every server launch of every engine answers a first 200.
        "first_200_s": round(
            statistics.median(run["first_200_s"] for row in rows for run in row["runs"]), 3
        ),
        "engines": {
            row["engine_id"]: {
                "size": row["size"],
                "first_200_s": row["first_200_median_s"],
                "first_image_s": row["first_image_median_s"],
                "baseline_image_s": row["baseline_image_median_s"],
                "ratio": row["ratio"],
                **{
                    name: row[f"{name.removesuffix('_s')}_median_s"]
                    for name in (
                        "preloaded_s",
                        "preload_first_request_s",
                        "preload_second_request_s",
                    )
                    if f"{name.removesuffix('_s')}_median_s" in row
                },
            }
            for row in rows
        },
    }


def upscale_figures(payloads: list[dict[str, Any]]) -> Figures:
    payload = payloads[0]
    crops = payload["quality"]

    def mean(method: str, key: str) -> float:
        return round(statistics.mean(crop[method][key] for crop in crops), 3)

    # tiling() puts each model's default-overlap row last.
    last_rows = {row["model"]: row for row in payload["tiling"]}
    return {
        "ncnn_max_abs_diff": max(
            (c["ncnn_max_abs_diff"] for c in payload["conversion"].values()),
            key=lambda value: -1 if value is None else value,
        ),
        "crops": len(crops),
        "clean": {
            method: {key: mean(method, key) for key in ("psnr_db", "ssim", "edge_energy_ratio")}
            for method in ("bicubic", "realesrgan-x4plus")
        },
        "degraded": {
            method: payload["quality_degraded_input"][method]
            for method in ("bicubic", "realesrgan-x4plus")
        },
        "tiled_max_diff_default_overlap": {
            model: {"overlap": row["overlap"], "max_abs_diff_uint8": row["max_abs_diff_uint8"]}
            for model, row in last_rows.items()
        },
        "upscale_128_to_512_s": {row["model"]: row["median_s"] for row in payload["timings"]},
    }


# --- README rows: (what it measures, figures), from the headline figures alone ----------------


def latency_row(f: Figures) -> tuple[str, str]:
    return (
        "text-to-image through our HTTP server vs the same diffusers call, "
        f"median of {f['repeats']}, {f['steps']} steps",
        ", ".join(
            f"{label(engine, e['size'])}: {x(e['ratio'])} "
            f"({e['http_median_s']:.2f} s vs {e['direct_median_s']:.2f} s)"
            for engine, e in f["engines"].items()
        ),
    )


def throughput_row(f: Figures) -> tuple[str, str]:
    engines = f["engines"].values()
    low = min(e["round_ratios"][0] for e in engines)
    high = max(e["round_ratios"][1] for e in engines)
    return (
        f"{f['clients']} concurrent HTTP clients vs the same {f['requests']} requests run one "
        "after another on the diffusers pipeline, no batching, median of "
        f"{f['rounds']} alternating rounds, {f['steps']} steps",
        ", ".join(
            f"{label(engine, e['size'])}: {x(e['median_ratio'], 3)}"
            for engine, e in f["engines"].items()
        )
        + f" (rounds {low:.2f}-{high:.2f})",
    )


def memory_row(f: Figures) -> tuple[str, str]:
    return (
        "peak RSS of one engine serving t2i + img2img + masking vs t2i alone, "
        "each in a fresh server",
        ", ".join(
            f"{label(engine, e['size'])}: {x(e['ratio'], 3)} "
            f"({e['text_to_image_mib']:.0f} -> {e['all_three_mib']:.0f} MiB)"
            for engine, e in f["engines"].items()
        ),
    )


def budget_figures(payloads: list[dict[str, Any]]) -> Figures:
    payload = payloads[0]
    unbounded, bounded = payload["results"]
    return {
        "rounds": payload["rounds"],
        "steps": payload["steps"],
        "text_mb": payload["text_mb"],
        "no_budget": unbounded,
        "budget": bounded,
    }


def budget_row(f: Figures) -> tuple[str, str]:
    n, b = f["no_budget"], f["budget"]
    return (
        "peak RSS of a server serving three SD 1 engines in turn (the tiny SD1 with "
        f"~{f['text_mb']} MB of weights each), no budget vs `max_loaded_engines = 2`, "
        f"{f['rounds']} rounds, {f['steps']} steps",
        f"peak RSS {n['peak_rss_mib']:.0f} -> {b['peak_rss_mib']:.0f} MiB; pipelines held at "
        f"the end {n['pipelines_loaded_at_end']:.0f} -> {b['pipelines_loaded_at_end']:.0f} "
        f"({n['pipelines_bytes_at_end_mib']:.0f} -> {b['pipelines_bytes_at_end_mib']:.0f} MiB); "
        f"loads {n['loads']:.0f} -> {b['loads']:.0f}, unloads {b['unloads']:.0f}; wall time "
        f"{n['wall_s']:.1f} -> {b['wall_s']:.1f} s",
    )


def batching_row(f: Figures) -> tuple[str, str]:
    engines = f["engines"]
    sizes = sorted({size for e in engines.values() for size in e["pipeline_gain"]}, key=int)
    pipeline = ", ".join(
        f"{label(engine, e['size'])} "
        + " / ".join(x(e["pipeline_gain"][s]) if s in e["pipeline_gain"] else "-" for s in sizes)
        for engine, e in engines.items()
    )
    http = ", ".join(
        f"{LABELS.get(engine, engine)} {x(e['http_gain'])}"
        for engine, e in engines.items()
        if e["http_gain"] is not None
    )
    figures = f"pipeline, batch of {' / '.join(sizes)}: {pipeline}"
    if http:
        figures += f"; HTTP: {http}"
    figures += (
        f"; batched images within {f['max_pixel_difference']}/255 of their solo runs on at "
        f"most {f['pixels_differing'] * 100:.2g} % of the pixels"
    )
    return (
        "the same requests batched vs one by one, through our diffusion functions and through "
        "HTTP (server with batching off vs on; SDXL's batch_max_images is 1), median of "
        f"{f['rounds']} alternating rounds, {f['steps']} steps",
        figures,
    )


def startup_row(f: Figures) -> tuple[str, str]:
    return (
        "time from launching `localstability serve` (fresh data dir) to its first 200 on "
        "GET /v1/engines/list and to its first image (the lazy pipeline load included) vs a "
        "fresh `python` that loads the same diffusers pipeline and makes the image, median of "
        f"{f['runs']}, {f['steps']} steps",
        f"first 200: {f['first_200_s']:.1f} s; first image "
        + ", ".join(
            f"{label(engine, e['size'])}: {e['first_image_s']:.1f} s vs "
            f"{e['baseline_image_s']:.1f} s ({x(e['ratio'])})"
            for engine, e in f["engines"].items()
        )
        + "".join(
            f"; preloaded {label(engine, e['size'])}: preload done {e['preloaded_s']:.1f} s "
            f"after launch, then the first image request {e['preload_first_request_s']:.1f} s "
            f"(the second {e['preload_second_request_s']:.1f} s)"
            for engine, e in f["engines"].items()
            if "preloaded_s" in e
        ),
    )


def scaleout_figures(payloads: list[dict[str, Any]]) -> Figures:
    return dict(payloads[0])


def scaleout_row(f: Figures) -> tuple[str, str]:
    t, lat, rec, rep = f["throughput"], f["latency"], f["recovery"], f["replica"]
    return (
        "the celery backend (API replica, workers on Redis and PostgreSQL) vs the embedded "
        f"server, {label(f['engine_id'], f['size'])}, {f['steps']} steps, torch on one thread "
        "per process",
        f"{t['requests']} concurrent requests: two workers {x(t['ratio'])} one "
        f"({t['two_workers_images_per_s']:.2f} vs {t['one_worker_images_per_s']:.2f} img/s); "
        f"p50 latency added by the celery path {lat['added_p50_ms']:.0f} ms "
        f"({lat['celery_p50_ms']:.0f} vs {lat['embedded_p50_ms']:.0f} ms); a worker killed "
        f"mid-job: images {rec['kill_to_images_s']:.1f} s later from another; API replica "
        f"start {rep['start_s']:.1f} s and {rep['rss_mib']:.0f} MiB vs the embedded server's "
        f"{rep['embedded_start_s']:.1f} s and {rep['embedded_rss_mib_after_first_image']:.0f} "
        "MiB" + _worker_batching(f),
    )


def _worker_batching(f: Figures) -> str:
    b = f.get("worker_batching")
    if not b:  # results from before batching ran on workers
        return ""
    return (
        f"; one worker batching the queued jobs {x(b['ratio'])} without "
        f"({b['one_worker_batched_images_per_s']:.2f} vs {b['one_worker_images_per_s']:.2f} img/s)"
    )


def upscale_row(f: Figures) -> tuple[str, str]:
    clean, degraded = f["clean"], f["degraded"]
    ours, bicubic = "realesrgan-x4plus", "bicubic"
    tiled = f["tiled_max_diff_default_overlap"].get(ours)
    ncnn = f["ncnn_max_abs_diff"]
    parts = [
        "conversion matches ncnn to "
        + (f"{ncnn:.0e}".replace("e-0", "e-") if ncnn is not None else "? (no ncnn)"),
        f"clean bicubic downscales (mean of {f['crops']} crops): x4plus "
        f"{clean[ours]['psnr_db']:.2f} dB / {clean[ours]['ssim']:.3f} vs bicubic "
        f"{clean[bicubic]['psnr_db']:.2f} dB / {clean[bicubic]['ssim']:.3f}, edges "
        f"{clean[ours]['edge_energy_ratio']:.2f} vs {clean[bicubic]['edge_energy_ratio']:.2f} "
        "of the original's gradient energy",
        f"JPEG-degraded downscale: x4plus {degraded[ours]['psnr_db']:.2f} dB / "
        f"{degraded[ours]['ssim']:.3f} vs bicubic {degraded[bicubic]['psnr_db']:.2f} dB / "
        f"{degraded[bicubic]['ssim']:.3f}",
    ]
    if tiled:
        parts.append(
            f"32 px tiles (overlap {tiled['overlap']}) within "
            f"{tiled['max_abs_diff_uint8']}/255 of untiled"
        )
    if ours in f["upscale_128_to_512_s"]:
        parts.append(f"128 -> 512 in {f['upscale_128_to_512_s'][ours]:.1f} s")
    return ("Real-ESRGAN x4plus (converted from ncnn) vs bicubic", "; ".join(parts))


# The order they run in, and the settings of a full run (those the README's figures used) and
# of --quick (the least the HTTP API takes: 10 steps; throughput and batching on SD1 only).
def in_process_and_http(payloads: list[dict[str, Any]]) -> Figures:
    """The figures of a benchmark with an in-process part and an HTTP part (loras, safety)."""
    return {"in_process": payloads[0]["in_process"], "http": payloads[0]["http"]}


def loras_row(f: Figures) -> tuple[str, str]:
    http = f["http"]
    families = "; ".join(
        f"{row['family'].upper()}: switch {row['adapter_switch_s'] * 1000:.1f} ms, first load "
        f"{row['adapter_first_load_s'] * 1000:.0f} ms vs base model load "
        f"{row['base_load_s'] * 1000:.0f} ms ({row['switch_vs_base_load']:.4f}x)"
        for row in f["in_process"]
    )
    return (
        "switching LoRA adapters between jobs vs loading the base model (in process), and "
        "through HTTP requests alternating two adapters vs all on one adapter vs none",
        f"{families}; HTTP {label(http['engine_id'], http['size'])}, {http['steps']} steps: "
        f"alternating {x(http['alternating_vs_same_adapter'])} one adapter, "
        f"{x(http['ratio'])} none ({http['alternating_adapters_median_s']:.2f} s vs "
        f"{http['same_adapter_median_s']:.2f} s vs {http['no_adapter_median_s']:.2f} s), "
        f"base model loads meanwhile: {http['base_model_loads_during']:.0f}",
    )


def safety_row(f: Figures) -> tuple[str, str]:
    local = f["in_process"]
    http = "; ".join(
        f"{label(row['engine_id'], row['size'])}: {x(row['ratio'], 3)} "
        f"({row['filter_on_median_s']:.3f} s vs {row['filter_off_median_s']:.3f} s)"
        for row in f["http"]
    )
    return (
        "the output filter (NudeNet) per image, and HTTP text-to-image with it vs without",
        f"NudeNet loads in {local['load_s']:.2f} s, looks at a 512x512 image in "
        f"{local['photo_512']['median_s'] * 1000:.0f} ms (1024x1024: "
        f"{local['photo_1024']['median_s'] * 1000:.0f} ms); HTTP filter on vs off: {http}",
    )


BENCHMARKS = [
    Benchmark(
        name="latency",
        result="latency",
        title="text-to-image through our HTTP server vs the same diffusers call",
        runs=[Run(full=[], quick=["--repeats", "1", "--steps", "10"])],
        figures=latency_figures,
        row=latency_row,
    ),
    Benchmark(
        name="throughput",
        result="throughput",
        title="concurrent HTTP clients vs the same requests run one after another",
        runs=[
            Run(
                full=["--rounds", "5"],
                quick=[
                    *("--requests", "2", "--clients", "2", "--rounds", "1", "--steps", "10"),
                    *("--engine", "stable-diffusion-v1-6"),
                ],
            )
        ],
        figures=throughput_figures,
        row=throughput_row,
    ),
    Benchmark(
        name="memory",
        result="memory",
        title="peak RSS of one engine serving t2i + img2img + masking vs t2i alone",
        runs=[
            Run(full=["--engine", engine], quick=["--engine", engine, "--repeats", "1"])
            for engine in MEMORY_ENGINES
        ],
        figures=memory_figures,
        row=memory_row,
    ),
    Benchmark(
        name="memory_budget",
        result="pipeline-budget",
        title="peak RSS of three engines in turn: no budget vs max_loaded_engines = 2",
        runs=[Run(full=[], quick=["--rounds", "1", "--text-mb", "50"])],
        figures=budget_figures,
        row=budget_row,
    ),
    Benchmark(
        name="batching",
        result="batching",
        title="the same requests batched vs one by one",
        runs=[
            Run(
                full=[],
                quick=[
                    *("--rounds", "1", "--sizes", "2", "--steps", "10"),
                    *("--requests", "2", "--clients", "2", "--engine", "stable-diffusion-v1-6"),
                ],
            )
        ],
        figures=batching_figures,
        row=batching_row,
    ),
    Benchmark(
        name="startup",
        result="startup",
        title="time from launching `localstability serve` to its first 200 and its first "
        "image vs a fresh `python` that loads the diffusers pipeline and makes the image",
        runs=[Run(full=["--preload"], quick=["--runs", "1", "--steps", "10"])],
        figures=startup_figures,
        row=startup_row,
    ),
    Benchmark(
        name="scaleout",
        result="scaleout",
        title="the celery backend vs the embedded server: throughput of one and two workers, "
        "latency added, recovery after a worker's death, an API replica's start and memory",
        runs=[Run(full=[], quick=["--requests", "4", "--latency-requests", "2"])],
        figures=scaleout_figures,
        row=scaleout_row,
    ),
    Benchmark(
        name="loras",
        result="loras",
        title="switching LoRA adapters between jobs vs loading the base model",
        runs=[Run(full=[], quick=["--repeats", "1"])],
        figures=in_process_and_http,
        row=loras_row,
    ),
    Benchmark(
        name="safety",
        result="safety",
        title="the output filter (NudeNet) per image, and HTTP text-to-image with it vs without",
        runs=[Run(full=[], quick=["--repeats", "1"])],
        figures=in_process_and_http,
        row=safety_row,
    ),
    Benchmark(
        name="upscale_quality",
        result="upscale-quality",
        title="Real-ESRGAN x4plus (converted from ncnn) vs bicubic",
        runs=[Run(full=[], quick=["--repeats", "1", "--overlaps", "64"])],
        figures=upscale_figures,
        row=upscale_row,
    ),
]
BY_NAME = {benchmark.name: benchmark for benchmark in BENCHMARKS}


# --- the README table ----------------------------------------------------------------------


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 600 else f"{seconds / 60:.1f} min"


def render_table(summary: dict[str, Any]) -> str:
    """The README's benchmark section (between the markers) from a summary."""
    info = summary["machine"]
    if summary.get("collected"):
        source = (
            "Figures from the newest result file of each benchmark in bench/results/ ("
            + ", ".join(f"{name} {b['date']}" for name, b in summary["benchmarks"].items())
            + ")"
        )
    else:
        source = (
            f"Latest run: `{summary['command']}` on {summary['date']}, "
            f"{minutes(summary['total_s'])} in all ({summary['file']})"
        )
    arch = info.get("arch") or info["description"].split(",")[0]
    lines = [
        f"{source}; {arch}, {info.get('cpus', '?')} cores, CPU only; {summary['models']}.",
        "",
        "| benchmark | figures |",
        "|---|---|",
    ]
    for benchmark in BENCHMARKS:
        entry = summary["benchmarks"].get(benchmark.name)
        command = f"`python -m bench.{benchmark.name}`"
        if entry is None or entry.get("figures") is None:
            reason = "not run yet" if entry is None else f"failed: {entry.get('error', '?')}"
            reason = reason.splitlines()[0][:120].replace("|", "/")
            lines.append(f"| {command}: {benchmark.title} | {reason} |")
            continue
        measures, figures = benchmark.row(entry["figures"])
        lines.append(f"| {command}: {measures} | {figures} |")
    return "\n".join(lines)


def update_readme(summary: dict[str, Any], readme: Path | None = None) -> None:
    """Replace what is between the README's markers with render_table(summary)."""
    readme = readme or README
    text = readme.read_text()
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{readme}: no {START} ... {END} markers")
    table = render_table(summary)
    readme.write_text(pattern.sub(lambda _: f"{START}\n{table}\n{END}", text, count=1))
    print(f"updated the benchmark table in {readme}")


# --- running ------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "description": machine(),
        "arch": platform.machine(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "diffusers": version("diffusers"),
    }


def clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


@contextmanager
def results_in(directory: Path) -> Iterator[None]:
    """Each benchmark's own file goes to DIRECTORY meanwhile (bench.write_results)."""
    previous = os.environ.get(RESULTS_ENV)
    os.environ[RESULTS_ENV] = str(directory)
    try:
        yield
    finally:
        if previous is None:
            del os.environ[RESULTS_ENV]
        else:
            os.environ[RESULTS_ENV] = previous


def run_all(names: list[str], quick: bool, out: Path, command: str) -> dict[str, Any]:
    """Run the benchmarks named, in BENCHMARKS order; the summary (also written to OUT)."""
    chosen = [b for b in BENCHMARKS if b.name in names]
    total_runs = sum(len(b.runs) for b in chosen)
    started = time.perf_counter()
    summary: dict[str, Any] = {
        "date": today(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "quick": quick,
        "machine": machine_info(),
        "models": TINY_MODELS,
        "benchmarks": {},
    }
    number = 0
    for benchmark in chosen:
        module = importlib.import_module(f"bench.{benchmark.name}")
        payloads: list[dict[str, Any]] = []
        runs: list[dict[str, Any]] = []
        error = None
        for run in benchmark.runs:
            number += 1
            argv = run.quick if quick else run.full
            title = " ".join([benchmark.name, *argv])
            print(
                f"[{number}/{total_runs}] {title}: start at {clock(time.perf_counter() - started)}",
                flush=True,
            )
            run_started = time.perf_counter()
            try:
                payloads.append(module.main(argv))
            except (Exception, SystemExit) as failure:  # the others still run
                traceback.print_exc()
                error = f"{type(failure).__name__}: {failure}"
            elapsed = time.perf_counter() - run_started
            runs.append({"args": argv, "elapsed_s": round(elapsed, 1)})
            print(
                f"[{number}/{total_runs}] {title}: {'failed' if error else 'done'} in "
                f"{clock(elapsed)} (total {clock(time.perf_counter() - started)})",
                flush=True,
            )
            if error:
                break
        entry: dict[str, Any] = {
            "runs": runs,
            "elapsed_s": round(sum(r["elapsed_s"] for r in runs), 1),
            "files": result_files(benchmark, payloads),
        }
        if error:
            entry["error"] = error
            entry["figures"] = None
        else:
            try:
                entry["figures"] = benchmark.figures(payloads)
            except Exception as failure:  # the summary keeps the rest; the file is written
                traceback.print_exc()
                entry["error"] = f"headline figures: {type(failure).__name__}: {failure}"
                entry["figures"] = None
        summary["benchmarks"][benchmark.name] = entry
    summary["total_s"] = round(time.perf_counter() - started, 1)
    name = f"all-quick-{today()}.json" if quick else f"all-{today()}.json"
    path = out / name
    summary["file"] = display(path)
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {path} ({clock(summary['total_s'])} in all)", flush=True)
    return summary


def display(path: Path) -> str:
    """PATH relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(README.parent))
    except ValueError:
        return str(path)


def result_files(benchmark: Benchmark, payloads: list[dict[str, Any]]) -> list[str]:
    """The names of the files the benchmark's runs wrote (memory: one per engine)."""
    if benchmark.name == "memory":
        return [f"memory-{p['engine_id']}-{today()}.json" for p in payloads]
    return [f"{benchmark.result}-{today()}.json" for _ in payloads]


DATED = re.compile(r"-(\d{4}-\d{2}-\d{2})\.json$")


def collect(directory: Path) -> dict[str, Any]:
    """A summary from the newest result file(s) of each benchmark in DIRECTORY."""
    summary: dict[str, Any] = {
        "collected": True,
        "machine": machine_info(),
        "models": TINY_MODELS,
        "benchmarks": {},
    }
    for benchmark in BENCHMARKS:
        newest: dict[str, tuple[str, Path]] = {}  # per engine for memory, else one
        for path in directory.glob(f"{benchmark.result}-*.json"):
            match = DATED.search(path.name)
            if not match or path.name.startswith("all-"):
                continue
            key = path.name[len(benchmark.result) + 1 : match.start()]
            if key and benchmark.name != "memory":
                continue  # e.g. another benchmark whose name starts the same
            if key not in newest or match.group(1) > newest[key][0]:
                newest[key] = (match.group(1), path)
        if not newest:
            continue
        found = [newest[key] for key in sorted(newest)]
        if benchmark.name == "memory":  # in MEMORY_ENGINES order
            found.sort(key=lambda item: memory_order(item[1].name))
        payloads = [json.loads(path.read_text()) for _, path in found]
        summary["benchmarks"][benchmark.name] = {
            "date": max(date for date, _ in found),
            "files": [path.name for _, path in found],
            "figures": benchmark.figures(payloads),
        }
    return summary


def memory_order(name: str) -> int:
    for index, engine in enumerate(MEMORY_ENGINES):
        if name.startswith(f"memory-{engine}-"):
            return index
    return len(MEMORY_ENGINES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="few repeats and steps: a smoke check (figures meaningless), not the full run",
    )
    parser.add_argument(
        "--only",
        action="extend",
        nargs="+",
        choices=list(BY_NAME),
        metavar="NAME",
        help=f"run only these benchmarks: {', '.join(BY_NAME)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="where the result files go (default: bench/results/; with --quick a new "
        "temporary folder)",
    )
    parser.add_argument(
        "--readme",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rewrite the README's table from this run (default: after a full run of all)",
    )
    parser.add_argument(
        "--readme-from",
        type=Path,
        metavar="SUMMARY",
        help="only rewrite the README's table from this all-YYYY-MM-DD.json",
    )
    parser.add_argument(
        "--collect",
        action="store_true",
        help="only rewrite the README's table from the newest result files in bench/results/",
    )
    args = parser.parse_args(argv)
    if args.readme_from:
        update_readme(json.loads(args.readme_from.read_text()))
        return 0
    if args.collect:
        update_readme(collect(args.out or RESULTS))
        return 0
    out: Path = args.out or (
        Path(tempfile.mkdtemp(prefix="bench-quick-")) if args.quick else RESULTS
    )
    if args.quick and out.resolve() == RESULTS.resolve():
        parser.error("--quick does not write to bench/results/ (its figures mean nothing)")
    names = args.only or list(BY_NAME)
    print(
        f"{'quick' if args.quick else 'full'} run of {', '.join(names)}; results in {out}",
        flush=True,
    )
    with results_in(out):
        command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
        summary = run_all(names, args.quick, out, command)
    failed = [name for name, entry in summary["benchmarks"].items() if "error" in entry]
    readme = args.readme
    if readme is None:
        readme = not args.quick and not args.only and not failed
    if readme:
        update_readme(summary)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
