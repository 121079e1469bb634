"""Peak resident memory of one engine serving text-to-image alone vs text-to-image,
image-to-image and masking together (the latter two build their pipelines from the first's
components with `from_pipe`, so they should add no second copy of the weights).

Each scenario runs in a fresh server process on the tiny models; the figure is the ratio of
the processes' peak resident set sizes (VmHWM).

    .venv/bin/python -m bench.memory [--engine stable-diffusion-xl-1024-v1-0] [--repeats 2]
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

from bench import TINY_MODELS, write_results

SIZES = {
    "stable-diffusion-xl-1024-v1-0": (1024, 1024),
    "stable-diffusion-v1-6": (512, 512),
    "stable-diffusion-512-v2-1": (512, 512),
}


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def run_scenario(config: Path, engine_id: str, tasks: list[str], repeats: int) -> float:
    from localstability.testing import start_server

    width, height = SIZES[engine_id]
    init = png(Image.new("RGB", (width, height), (120, 160, 200)))
    mask_pixels = Image.new("L", (width, height), 0)
    mask_pixels.paste(255, (0, 0, width // 2, height))
    mask = png(mask_pixels)
    prompt = {"text_prompts[0][text]": "a lighthouse", "steps": "10", "seed": "1"}
    server = start_server(config, config.parent / f"server-{'-'.join(tasks)}.log")
    try:
        with server.client() as client:
            base = f"/v1/generation/{engine_id}"
            for _ in range(repeats):
                for task in tasks:
                    if task == "text-to-image":
                        body = {
                            "text_prompts": [{"text": "a lighthouse"}],
                            "steps": 10,
                            "width": width,
                            "height": height,
                            "seed": 1,
                        }
                        response = client.post(f"{base}/text-to-image", json=body)
                    elif task == "image-to-image":
                        response = client.post(
                            f"{base}/image-to-image",
                            data=prompt,
                            files={"init_image": ("i.png", init)},
                        )
                    else:
                        response = client.post(
                            f"{base}/image-to-image/masking",
                            data={**prompt, "mask_source": "MASK_IMAGE_WHITE"},
                            files={"init_image": ("i.png", init), "mask_image": ("m.png", mask)},
                        )
                    response.raise_for_status()
        return peak_rss_mib(server.process.pid)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run with these command-line arguments (default: sys.argv); returns what it wrote."""
    from localstability.testing import run_cli

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", default="stable-diffusion-xl-1024-v1-0", choices=SIZES)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        tiny = Path(scratch)
        print("building tiny models...", flush=True)
        run_cli("models", "make-tiny", str(tiny))
        config = tiny / "localstability.toml"
        alone = run_scenario(config, args.engine, ["text-to-image"], args.repeats)
        print(f"text-to-image alone: peak RSS {alone:.0f} MiB", flush=True)
        together = run_scenario(
            config, args.engine, ["text-to-image", "image-to-image", "masking"], args.repeats
        )
        print(f"text-to-image + image-to-image + masking: peak RSS {together:.0f} MiB", flush=True)
    ratio = together / alone
    print(f"ratio {ratio:.3f} (target <= 1.1)")
    payload: dict[str, Any] = {
        "benchmark": "peak RSS of one engine: t2i alone vs t2i + img2img + masking",
        "models": TINY_MODELS,
        "engine_id": args.engine,
        "size": "x".join(map(str, SIZES[args.engine])),
        "repeats": args.repeats,
        "text_to_image_peak_rss_mib": round(alone, 1),
        "all_three_peak_rss_mib": round(together, 1),
        "ratio": round(ratio, 3),
    }
    write_results(f"memory-{args.engine}", payload)
    return payload


if __name__ == "__main__":
    main()
