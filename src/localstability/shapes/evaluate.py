"""Score the shapes model on captions it never saw in training, and draw a grid of examples.

Each held-out scene's full caption ("a large red circle at the top left on a white
background") is generated once, with its own seed, by the standard StableDiffusionPipeline
with the API's defaults (30 steps, guidance 7, K_DPMPP_2M). The detector reads the picture
back; the score of an attribute is how often it matches the caption.

It also measures how far apart the text encoder holds the words of each attribute: for a few
held-out scenes, the captions that differ in that attribute alone are encoded and their mean
distance taken, relative to the outputs' size. A model cannot draw what its text encoder does
not tell apart.

And it measures where the layout comes from: at the sampler's first step, from one noise, the
clean picture the model predicts for each of the nine place words. If the place words move
the shape there, the spread of its centre matches the grid's; if the spread is near zero, the
place is read from the starting noise (the seed), whatever the prompt says.

    python -m localstability.shapes.evaluate [--model FOLDER] [--json FILE] [--grid FILE]
"""

from __future__ import annotations

import argparse
import json
import textwrap
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from localstability.shapes import scenes
from localstability.shapes.detect import border_colour, detect

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


def _values(scene: scenes.Scene, attribute: str) -> list[str]:
    if attribute == "colour":
        return [c for c in scenes.COLOURS if c != scene.background]
    if attribute == "background":
        return [c for c in scenes.COLOURS if c != scene.colour]
    return list(
        {"shape": scenes.SHAPES, "size": scenes.SIZES, "position": scenes.POSITIONS}[attribute]
    )


def text_separation(pipe: Any, count: int = 8) -> dict[str, float]:
    """Per attribute: mean distance between the encoded captions that differ in it alone,
    over the mean size of an encoding (all 77 token outputs, flattened)."""
    import torch

    found: dict[str, float] = {}
    for attribute in ATTRIBUTES:
        ratios = []
        for scene in scenes.evaluation_scenes(count):
            captions = [
                replace(scene, **{attribute: value}).caption()  # type: ignore[arg-type]
                for value in _values(scene, attribute)
            ]
            with torch.no_grad():
                encoded, _ = pipe.encode_prompt(captions, "cpu", 1, False)
            flat = encoded.flatten(1).float()
            pairs = len(captions) * (len(captions) - 1)
            ratios.append(float(torch.cdist(flat, flat).sum() / pairs / flat.norm(dim=1).mean()))
        found[attribute] = round(sum(ratios) / len(ratios), 4)
    return found


def _centre(image: Any) -> Any:
    """Centre of mass, in pixels, of where a decoded picture differs most from its border.

    Only the pixels that differ by more than half the largest difference count: the faint,
    picture-wide errors of the autoencoder would otherwise pull every centre to the middle.
    """
    import numpy as np

    pixels = np.asarray(image, dtype=np.float32)
    difference = np.abs(pixels - border_colour(pixels)).sum(axis=-1)
    weight = np.clip(difference - difference.max() / 2, 0, None)
    rows, columns = np.mgrid[: weight.shape[0], : weight.shape[1]]
    total = max(float(weight.sum()), 1e-6)
    return np.array([(weight * columns).sum() / total, (weight * rows).sum() / total])


def place_spread(predict: Any, vae: Any, count: int = 4) -> dict[str, float]:
    """How far the nine place words spread the shape in a predicted clean picture.

    For `count` held-out scenes, each with its own noise, `predict(noise, captions)` gives
    the clean latents for the nine captions that differ in the place alone (one noise for
    all nine; the noise is on the CPU, the latents may come back on any device). Returns the
    mean distance (pixels) of the nine decoded shapes' centres from
    their mean, the same for the grid's own centres, and the alignment: the least-squares
    slope of the centres on the grid's places (1 when the shapes land where their words say,
    0 when the words do not move them, or move them at random).
    """
    import numpy as np
    import torch

    side, centre = scenes.IMAGE_SIZE, scenes.GRID_CENTRES
    grid = np.array([[centre[c] * side, centre[r] * side] for c, r in scenes.POSITIONS.values()])
    grid = grid - grid.mean(0)
    spreads, slopes = [], []
    for seed, scene in enumerate(scenes.evaluation_scenes(count)):
        captions = [replace(scene, position=place).caption() for place in scenes.POSITIONS]
        generator = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn((1, 4, side // 8, side // 8), generator=generator)
        with torch.no_grad():
            clean = predict(noise.expand(len(captions), -1, -1, -1), captions)
            decoded = vae.decode(clean / vae.config.scaling_factor).sample.float().cpu()
        images = ((decoded.clamp(-1, 1).permute(0, 2, 3, 1).numpy() + 1) * 127.5).astype(np.uint8)
        centres = np.stack([_centre(i) for i in images])
        centres = centres - centres.mean(0)
        spreads.append(float(np.linalg.norm(centres, axis=1).mean()))
        slopes.append(float((centres * grid).sum() / (grid * grid).sum()))
    return {
        "spread_px": round(sum(spreads) / len(spreads), 2),
        "grid_spread_px": grid_spread(),
        "alignment": round(sum(slopes) / len(slopes), 3),
    }


def grid_spread() -> float:
    """The mean distance (pixels) of the grid's nine places from their mean: 34.34."""
    import numpy as np

    side, centre = scenes.IMAGE_SIZE, scenes.GRID_CENTRES
    grid = np.array([[centre[c] * side, centre[r] * side] for c, r in scenes.POSITIONS.values()])
    return round(float(np.linalg.norm(grid - grid.mean(0), axis=1).mean()), 2)


def first_step_places(pipe: Any, count: int = 4, guidance: float = 7.0) -> dict[str, float]:
    """`place_spread` of the clean picture the model predicts at the sampler's first step."""
    import torch

    scheduler = pipe.scheduler
    scheduler.set_timesteps(30)
    step = scheduler.timesteps[0]
    alpha = scheduler.alphas_cumprod[int(step)]
    v_prediction = scheduler.config.prediction_type == "v_prediction"
    # The API's default sampler (DPM-Solver++) works on unscaled latents: x_t is the noise.
    if scheduler.init_noise_sigma != 1:
        raise ValueError(f"{type(scheduler).__name__} scales its latents; use DPM-Solver++")

    def predict(latents: Any, captions: list[str]) -> Any:
        text, empty = pipe.encode_prompt(captions, "cpu", 1, True, None)
        out = pipe.unet(torch.cat([latents, latents]), step, torch.cat([empty, text])).sample
        unguided, guided = out.chunk(2)
        out = unguided + guidance * (guided - unguided)
        if v_prediction:
            return alpha.sqrt() * latents - (1 - alpha).sqrt() * out
        return (latents - (1 - alpha).sqrt() * out) / alpha.sqrt()

    return place_spread(predict, pipe.vae, count)


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
    report: dict[str, Any] = {
        "captions": count,
        "steps": steps,
        "guidance": 7.0,
        "scores": scores,
        "targets": TARGETS,
        "meets_targets": all(scores[a] >= t for a, t in TARGETS.items()),
        "seconds": round(time.monotonic() - started, 1),
        "text_separation": text_separation(pipe),
        "first_step_places": first_step_places(pipe),
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
    apart = ", ".join(f"{a} {d:.3f}" for a, d in report["text_separation"].items())
    print(f"text encoder, captions apart by attribute: {apart}")
    places = report["first_step_places"]
    print(
        f"first step: the place words spread the shape {places['spread_px']} px "
        f"(the grid's places: {places['grid_spread_px']} px), alignment {places['alignment']}"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.grid:
        shown = report["samples"][:24]
        grid(images[:24], [s["caption"] for s in shown]).save(args.grid)


if __name__ == "__main__":
    main()
