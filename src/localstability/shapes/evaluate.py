"""Score the shapes model on captions it never saw in training, and draw a grid of examples.

Each held-out scene's full caption ("a large red circle at the top left on a white
background") is generated once, with its own seed, by the standard StableDiffusionPipeline
with the API's defaults (30 steps, guidance 7, K_DPMPP_2M). The detector reads the picture
back; the score of an attribute is how often it matches the caption.

    python -m localstability.shapes.evaluate [--model FOLDER] [--json FILE] [--grid FILE]
"""

from __future__ import annotations

import argparse
import json
import textwrap
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from localstability.shapes import scenes
from localstability.shapes.detect import detect

ATTRIBUTES = ("colour", "shape", "position", "size", "background")
TARGETS = {"colour": 0.8, "shape": 0.6}


def load(model: Path) -> Any:
    import torch
    from diffusers import StableDiffusionPipeline

    from localstability.inference.schedulers import make_scheduler

    pipe = StableDiffusionPipeline.from_pretrained(str(model), dtype=torch.float32)
    pipe.scheduler = make_scheduler(None, pipe.scheduler.config)  # the API's default sampler
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe: Any, caption: str, seed: int, steps: int = 30, guidance: float = 7.0) -> Any:
    import torch

    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(
        caption,
        height=scenes.IMAGE_SIZE,
        width=scenes.IMAGE_SIZE,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generator,
    ).images[0]


def evaluate(pipe: Any, count: int, steps: int = 30) -> tuple[dict[str, Any], list[Any]]:
    """Generate `count` held-out scenes; return the scores and the images."""
    started = time.monotonic()
    samples: list[dict[str, Any]] = []
    images = []
    hits = dict.fromkeys(ATTRIBUTES, 0)
    for i, scene in enumerate(scenes.evaluation_scenes(count)):
        caption = scene.caption()
        image = generate(pipe, caption, seed=i, steps=steps)
        found = detect(image)
        for attribute in ATTRIBUTES:
            hits[attribute] += getattr(found, attribute) == getattr(scene, attribute)
        samples.append({"caption": caption, "seed": i, "detected": asdict(found)})
        images.append(image)
    scores = {attribute: hits[attribute] / count for attribute in ATTRIBUTES}
    report = {
        "captions": count,
        "steps": steps,
        "guidance": 7.0,
        "scores": scores,
        "targets": TARGETS,
        "meets_targets": all(scores[a] >= t for a, t in TARGETS.items()),
        "seconds": round(time.monotonic() - started, 1),
        "samples": samples,
    }
    return report, images


def grid(images: list[Any], captions: list[str], columns: int = 6) -> Image.Image:
    """Images with their captions under them, `columns` to a row."""
    cell, text_height = scenes.IMAGE_SIZE, 40
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new(
        "RGB", (columns * (cell + 8) + 8, rows * (cell + text_height + 8) + 8), "white"
    )
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=10)
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        x = 8 + (i % columns) * (cell + 8)
        y = 8 + (i // columns) * (cell + text_height + 8)
        sheet.paste(image.resize((cell, cell)), (x, y))
        lines = textwrap.wrap(caption, width=26)[:3]
        draw.multiline_text((x, y + cell + 2), "\n".join(lines), fill="black", font=font, spacing=1)
    return sheet


def main(argv: list[str] | None = None) -> None:
    from localstability.engines import shapes_model_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=shapes_model_dir())
    parser.add_argument("--captions", type=int, default=200)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--grid", type=Path, help="write a grid of the first 24 here")
    args = parser.parse_args(argv)
    report, images = evaluate(load(args.model), args.captions, args.steps)
    summary = ", ".join(f"{a} {s:.1%}" for a, s in report["scores"].items())
    print(f"{args.captions} held-out captions: {summary} ({report['seconds']} s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.grid:
        shown = report["samples"][:24]
        grid(images[:24], [s["caption"] for s in shown]).save(args.grid)


if __name__ == "__main__":
    main()
