"""What a generation returns: PNG-encoded images with their seeds and finish reasons."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from localstability.inference import diffusion
from localstability.protocol import FinishReason


@dataclass(frozen=True)
class Artifact:
    """One generated image, PNG-encoded, with the seed that made it."""

    png: bytes
    seed: int
    finish_reason: FinishReason


def encode_png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def to_artifacts(
    images: list[diffusion.GeneratedImage], check: Callable[[], None] = lambda: None
) -> list[Artifact]:
    """PNG artifacts of the images; `check` runs before each one (a cancelled job raises)."""
    artifacts = []
    for generated in images:
        check()
        reason = FinishReason.CONTENT_FILTERED if generated.nsfw else FinishReason.SUCCESS
        artifacts.append(Artifact(encode_png(generated.image), generated.seed, reason))
    return artifacts
