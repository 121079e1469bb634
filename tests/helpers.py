"""Small helpers shared by the tests."""

from __future__ import annotations

import base64
import importlib.util
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_image(data: bytes) -> Image.Image:
    assert data.startswith(PNG_SIGNATURE), "not a PNG"
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def artifact_image(artifact: dict[str, Any]) -> Image.Image:
    return png_image(base64.b64decode(artifact["base64"]))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def t2i_body(**fields: Any) -> dict[str, Any]:
    """A small, fast text-to-image body (10 steps) with fields overridden."""
    body: dict[str, Any] = {"text_prompts": [{"text": "a lighthouse on a cliff"}], "steps": 10}
    body.update(fields)
    return body


def sample_picture(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A deterministic picture with gradients and shapes (not noise), in `mode`."""
    from PIL import ImageDraw

    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack(
        [
            np.broadcast_to(x, (height, width)),
            np.broadcast_to(y, (height, width)),
            np.full((height, width), 96, np.float32),
        ],
        axis=-1,
    ).astype(np.uint8)
    image = Image.fromarray(rgb, "RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 4, height // 4, width // 2, height // 2), fill=(220, 40, 40))
    draw.rectangle((width // 2, height // 2, 3 * width // 4, 7 * height // 8), fill=(20, 20, 200))
    return image.convert(mode)


def encode(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def prompt_fields(*prompts: tuple[str, float], start: int = 0) -> dict[str, str]:
    """Multipart text fields text_prompts[i][text] / [weight] as clients send them."""
    fields: dict[str, str] = {}
    for offset, (text, weight) in enumerate(prompts):
        fields[f"text_prompts[{start + offset}][text]"] = text
        fields[f"text_prompts[{start + offset}][weight]"] = str(weight)
    return fields


def direct_pipeline(pipeline_class: Any, folder: Any, scheduler_class: Any = None) -> Any:
    """The baseline the server must match: a diffusers pipeline loaded straight from `folder`,
    with the scheduler of the server's default sampler (K_DPMPP_2M) unless one is given."""
    from diffusers import DPMSolverMultistepScheduler

    pipe = pipeline_class.from_pretrained(folder)
    pipe.scheduler = (scheduler_class or DPMSolverMultistepScheduler).from_config(
        pipe.scheduler.config
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seeds: list[int] | tuple[int, ...]) -> list[Any]:
    """One CPU torch.Generator per seed, as a client of diffusers would pass them."""
    import torch

    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def composited(init: Image.Image, generated: Image.Image, mask: Image.Image) -> np.ndarray:
    """The documented masking composite, written independently of the server's code:
    round(init * (1 - m) + generated * m) with m = mask / 255."""
    weight = np.asarray(mask, np.float32)[..., None] / 255.0
    blended = (
        np.asarray(init.convert("RGB"), np.float32) * (1 - weight) + pixels(generated) * weight
    )
    return np.clip(np.rint(blended), 0, 255).astype(np.int16)


def skimage_photo(name: str) -> Path:
    """A photo that scikit-image's wheel ships (public domain, e.g. astronaut.png), read without
    importing skimage; the test is skipped where scikit-image is not installed."""
    spec = importlib.util.find_spec("skimage")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "data" / name
        if path.is_file():
            return path
    pytest.skip(f"scikit-image (which ships data/{name} in its wheel) is not installed")
