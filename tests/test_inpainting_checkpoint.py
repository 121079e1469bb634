"""Masking with a dedicated inpainting checkpoint (`inpainting_source`, a 9-channel UNet)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from diffusers import StableDiffusionInpaintPipeline
from fastapi.testclient import TestClient
from PIL import Image

from localstability.app import create_app
from localstability.config import EngineConfig, Settings
from localstability.tiny import build_tiny_pipeline
from tests.helpers import (
    artifact_image,
    composited,
    direct_pipeline,
    encode,
    pixels,
    prompt_fields,
    sample_picture,
    seeded,
)

ENGINE = "stable-diffusion-v1-6"
PATH = f"/v1/generation/{ENGINE}/image-to-image/masking"
W, H = 320, 384
INIT = sample_picture(W, H)
SEEDS = (4, 5)


def left_half_mask() -> Image.Image:
    mask = np.zeros((H, W), np.uint8)
    mask[:, : W // 2] = 255
    return Image.fromarray(mask, "L")


MASK = left_half_mask()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny sd1 pipeline and its 9-channel inpainting counterpart."""
    directory = tmp_path_factory.mktemp("inpainting-models")
    sd1 = build_tiny_pipeline("sd1", directory / "sd1")
    sd1_inpaint = build_tiny_pipeline("sd1-inpaint", directory / "sd1-inpaint")
    return sd1, sd1_inpaint


def serve_masking(data_dir: Path, engine: EngineConfig) -> list[np.ndarray]:
    """POST one masking request (2 samples) to an in-process app; return the images' pixels."""
    settings = Settings(data_dir=data_dir, offline=True, log_json=False, engines={ENGINE: engine})
    with TestClient(create_app(settings), raise_server_exceptions=False) as app_client:
        key = (data_dir / "admin-key.txt").read_text().strip()
        response = app_client.post(
            PATH,
            headers={"Authorization": f"Bearer {key}"},
            data={
                **prompt_fields(("a stone wall", 1)),
                "mask_source": "MASK_IMAGE_WHITE",
                "steps": "10",
                "seed": str(SEEDS[0]),
                "samples": str(len(SEEDS)),
            },
            files={
                "init_image": ("init.png", encode(INIT), "image/png"),
                "mask_image": ("mask.png", encode(MASK), "image/png"),
            },
        )
    assert response.status_code == 200, response.text
    artifacts = response.json()["artifacts"]
    assert [a["seed"] for a in artifacts] == list(SEEDS)
    return [pixels(artifact_image(a)) for a in artifacts]


@pytest.fixture(scope="module")
def served(
    models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[np.ndarray]]:
    sd1, sd1_inpaint = models
    engine = EngineConfig(source=str(sd1), inpainting_source=str(sd1_inpaint))
    yield serve_masking(tmp_path_factory.mktemp("inpainting-data"), engine)


def test_the_checkpoint_is_a_9_channel_inpainting_pipeline(models: tuple[Path, Path]) -> None:
    _, sd1_inpaint = models
    assert "StableDiffusionInpaintPipeline" in (sd1_inpaint / "model_index.json").read_text()
    assert '"in_channels": 9' in (sd1_inpaint / "unet" / "config.json").read_text()


def test_kept_half_is_the_init_image(served: list[np.ndarray]) -> None:
    original = pixels(INIT)
    for out in served:
        assert out.shape == (H, W, 3)
        assert np.array_equal(out[:, W // 2 :], original[:, W // 2 :])
        assert np.abs(out[:, : W // 2] - original[:, : W // 2]).mean() > 10
    assert not np.array_equal(served[0], served[1])


def test_matches_the_checkpoint_through_diffusers_then_composite(
    models: tuple[Path, Path], served: list[np.ndarray]
) -> None:
    _, sd1_inpaint = models
    # One row per sample, each with its own image, mask and generator: the 9-channel
    # pipeline samples the masked image's latents from each row's generator, so every image
    # depends on its own seed only (given once, the first seed's draw would serve them all).
    direct = direct_pipeline(StableDiffusionInpaintPipeline, sd1_inpaint)(
        prompt="a stone wall",
        image=[INIT] * len(SEEDS),
        mask_image=[MASK] * len(SEEDS),
        width=W,
        height=H,
        strength=1.0,
        num_inference_steps=10,
        guidance_scale=7.0,
        num_images_per_prompt=len(SEEDS),
        generator=seeded(SEEDS),
    ).images
    for ours, theirs in zip(served, direct, strict=True):
        assert np.array_equal(ours, composited(INIT, theirs, MASK))


def test_differs_from_the_4_channel_base_pipeline(
    models: tuple[Path, Path], served: list[np.ndarray], tmp_path: Path
) -> None:
    sd1, _ = models
    base = serve_masking(tmp_path / "data", EngineConfig(source=str(sd1)))
    original = pixels(INIT)
    for ours, theirs in zip(served, base, strict=True):
        assert np.array_equal(theirs[:, W // 2 :], original[:, W // 2 :])
        assert not np.array_equal(ours[:, : W // 2], theirs[:, : W // 2])
