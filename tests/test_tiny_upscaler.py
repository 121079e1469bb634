"""The tiny random-weight x4 upscaler fixture (localstability.tiny, family "sd-x4-upscaler")."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionUpscalePipeline
from PIL import Image

from localstability.tiny import FAMILIES, build_tiny_pipeline, is_tiny_fixture

FAMILY = "sd-x4-upscaler"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(FAMILY, tmp_path_factory.mktemp("tiny") / FAMILY)


@pytest.fixture(scope="module")
def pipe(folder: Path) -> Any:
    # Loading must not warn (a wrong VAE scaling_factor, for one, makes diffusers warn).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipeline = StableDiffusionUpscalePipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def low_res_image(size: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")


def upscale(pipe: Any, image: Image.Image, seed: int) -> Image.Image:
    result: Image.Image = pipe(
        prompt="a photo",
        image=image,
        num_inference_steps=10,
        guidance_scale=7,
        noise_level=20,
        generator=torch.Generator().manual_seed(seed),
    ).images[0]
    return result


def test_family_is_listed_and_labelled(folder: Path) -> None:
    assert FAMILY in FAMILIES
    assert is_tiny_fixture(folder)
    assert "StableDiffusionUpscalePipeline" in (folder / "model_index.json").read_text()


def test_layout_matches_the_real_upscaler(pipe: Any) -> None:
    assert pipe.vae_scale_factor == 4
    assert pipe.vae.config.scaling_factor == 0.08333
    assert pipe.unet.config.in_channels == 7
    assert pipe.unet.config.num_class_embeds == 1000
    assert pipe.config.max_noise_level == 350
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert type(pipe.low_res_scheduler).__name__ == "DDPMScheduler"
    assert pipe.tokenizer.pad_token == "!"


def test_upscales_4x(pipe: Any) -> None:
    result = upscale(pipe, low_res_image(64), seed=1)
    assert result.size == (256, 256)
    assert result.mode == "RGB"


def test_deterministic_for_a_seed(pipe: Any) -> None:
    image = low_res_image(64)
    first = np.asarray(upscale(pipe, image, seed=7))
    again = np.asarray(upscale(pipe, image, seed=7))
    other = np.asarray(upscale(pipe, image, seed=8))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
