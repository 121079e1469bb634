"""Small helpers shared by the tests."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
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
