"""The same request through our server and straight through diffusers gives the same pixels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from tests.helpers import artifact_image, direct_pipeline, pixels, seeded

CASES = [
    # engine, family folder, pipeline class, size, sampler name, scheduler class
    (
        "stable-diffusion-v1-6",
        "sd1",
        StableDiffusionPipeline,
        (320, 384),
        None,
        DPMSolverMultistepScheduler,
    ),
    (
        "stable-diffusion-512-v2-1",
        "sd2",
        StableDiffusionPipeline,
        (512, 512),
        None,
        DPMSolverMultistepScheduler,
    ),
    (
        "stable-diffusion-xl-1024-v1-0",
        "sdxl",
        StableDiffusionXLPipeline,
        (1024, 1024),
        None,
        DPMSolverMultistepScheduler,
    ),
    (
        "stable-diffusion-xl-beta-v2-2-2",
        "sdxl",
        StableDiffusionXLPipeline,
        (512, 768),
        "K_EULER_ANCESTRAL",
        EulerAncestralDiscreteScheduler,
    ),
]


def direct_images(
    folder: Path, pipeline_class: Any, scheduler_class: Any, **call: Any
) -> list[np.ndarray]:
    pipe = direct_pipeline(pipeline_class, folder, scheduler_class)
    seeds = call.pop("seeds")
    result = pipe(
        **call,
        num_images_per_prompt=len(seeds),
        generator=seeded(seeds),
    )
    return [pixels(image) for image in result.images]


@pytest.mark.parametrize(
    ("engine_id", "family", "pipeline_class", "size", "sampler", "scheduler_class"), CASES
)
def test_server_matches_diffusers_pixel_for_pixel(
    client: httpx.Client,
    tiny_dir: Path,
    engine_id: str,
    family: str,
    pipeline_class: Any,
    size: tuple[int, int],
    sampler: str | None,
    scheduler_class: Any,
) -> None:
    width, height = size
    body: dict[str, Any] = {
        "text_prompts": [
            {"text": "a red house by a lake", "weight": 1},
            {"text": "blurry, low quality", "weight": -1},
        ],
        "width": width,
        "height": height,
        "steps": 10,
        "cfg_scale": 6.5,
        "seed": 1234,
        "samples": 2,
    }
    if sampler:
        body["sampler"] = sampler
    response = client.post(f"/v1/generation/{engine_id}/text-to-image", json=body)
    assert response.status_code == 200, response.text
    served = [pixels(artifact_image(a)) for a in response.json()["artifacts"]]
    direct = direct_images(
        tiny_dir / family,
        pipeline_class,
        scheduler_class,
        prompt="a red house by a lake",
        negative_prompt="blurry, low quality",
        width=width,
        height=height,
        num_inference_steps=10,
        guidance_scale=6.5,
        seeds=[1234, 1235],
    )
    assert served[0].shape == (height, width, 3)
    for ours, theirs in zip(served, direct, strict=True):
        assert np.array_equal(ours, theirs)
    assert not np.array_equal(served[0], served[1])
