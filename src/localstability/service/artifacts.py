"""What a generation returns: PNG-encoded images with their seeds and finish reasons."""

from __future__ import annotations

import io
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


def to_artifacts(images: list[diffusion.GeneratedImage]) -> list[Artifact]:
    return [
        Artifact(
            png=encode_png(generated.image),
            seed=generated.seed,
            finish_reason=FinishReason.CONTENT_FILTERED if generated.nsfw else FinishReason.SUCCESS,
        )
        for generated in images
    ]
