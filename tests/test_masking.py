"""POST /v1/generation/{engine_id}/image-to-image/masking (multipart), over HTTP with httpx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from diffusers import (
    StableDiffusionInpaintPipeline,
    StableDiffusionXLInpaintPipeline,
)
from PIL import Image

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
from tests.test_accounts_engines import assert_envelope

SD1 = "/v1/generation/stable-diffusion-v1-6/image-to-image/masking"
SD2 = "/v1/generation/stable-diffusion-512-v2-1/image-to-image/masking"
SDXL = "/v1/generation/stable-diffusion-xl-1024-v1-0/image-to-image/masking"
W, H = 320, 384
INIT = sample_picture(W, H)


def half_mask(value: int = 255, width: int = W, height: int = H) -> Image.Image:
    """`value` on the left half, black on the right half."""
    mask = np.zeros((height, width), np.uint8)
    mask[:, : width // 2] = value
    return Image.fromarray(mask, "L")


def masking(
    client: httpx.Client,
    mask_source: str,
    init: Image.Image = INIT,
    mask: Image.Image | None = None,
    path: str = SD1,
    **fields: Any,
) -> httpx.Response:
    data = {
        **prompt_fields(("a stone wall", 1)),
        "mask_source": mask_source,
        "steps": "10",
        "seed": "4",
        **{k: str(v) for k, v in fields.items()},
    }
    files = {"init_image": ("init.png", encode(init), "image/png")}
    if mask is not None:
        files["mask_image"] = ("mask.png", encode(mask), "image/png")
    return client.post(path, data=data, files=files)


def result(response: httpx.Response, index: int = 0) -> np.ndarray:
    assert response.status_code == 200, response.text
    return pixels(artifact_image(response.json()["artifacts"][index]))


def test_white_mask_replaces_white_and_keeps_black_exactly(any_client: httpx.Client) -> None:
    out = result(masking(any_client, "MASK_IMAGE_WHITE", mask=half_mask()))
    original = pixels(INIT)
    assert out.shape == (H, W, 3)
    kept = np.abs(out[:, W // 2 :] - original[:, W // 2 :])
    replaced = np.abs(out[:, : W // 2] - original[:, : W // 2])
    assert kept.max() == 0  # measured: the kept half is the input, pixel for pixel
    assert replaced.mean() > 10


def test_black_mask_is_the_inverse(client: httpx.Client) -> None:
    white = result(masking(client, "MASK_IMAGE_WHITE", mask=half_mask()))
    inverted = Image.fromarray(255 - np.asarray(half_mask()), "L")
    black = result(masking(client, "MASK_IMAGE_BLACK", mask=inverted))
    assert np.array_equal(white, black)


def test_init_image_alpha(any_client: httpx.Client) -> None:
    rgba = INIT.convert("RGBA")
    alpha = 255 - np.asarray(half_mask())  # left half transparent: replaced
    rgba.putalpha(Image.fromarray(alpha, "L"))
    out = result(masking(any_client, "INIT_IMAGE_ALPHA", init=rgba))
    original = pixels(INIT)
    assert np.abs(out[:, W // 2 :] - original[:, W // 2 :]).max() == 0
    assert np.abs(out[:, : W // 2] - original[:, : W // 2]).mean() > 10
    white = result(masking(any_client, "MASK_IMAGE_WHITE", mask=half_mask()))
    assert np.array_equal(out, white)


def test_grey_is_a_linear_partial_strength(client: httpx.Client) -> None:
    full = result(masking(client, "MASK_IMAGE_WHITE", mask=half_mask(255)))
    grey = result(masking(client, "MASK_IMAGE_WHITE", mask=half_mask(128)))
    original = pixels(INIT).astype(np.float64)
    expected = original * (1 - 128 / 255) + full * (128 / 255)
    assert np.abs(grey[:, : W // 2] - expected[:, : W // 2]).max() <= 1
    assert np.array_equal(grey[:, W // 2 :], pixels(INIT)[:, W // 2 :])


def test_samples_and_sd2(client: httpx.Client) -> None:
    response = masking(client, "MASK_IMAGE_WHITE", mask=half_mask(), samples=2)
    assert [a["seed"] for a in response.json()["artifacts"]] == [4, 5]
    assert not np.array_equal(result(response, 0), result(response, 1))
    init = sample_picture(512, 512)
    out = result(
        masking(client, "MASK_IMAGE_WHITE", init=init, mask=half_mask(255, 512, 512), path=SD2)
    )
    assert np.array_equal(out[:, 256:], pixels(init)[:, 256:])


def test_mask_errors(any_client: httpx.Client) -> None:
    missing = masking(any_client, "MASK_IMAGE_WHITE")
    assert "mask_image" in assert_envelope(missing, 400, "invalid_mask_image")["message"]
    assert_envelope(masking(any_client, "MASK_IMAGE_BLACK"), 400, "invalid_mask_image")
    wrong_size = masking(any_client, "MASK_IMAGE_WHITE", mask=half_mask(255, 320, 320))
    body = assert_envelope(wrong_size, 400, "invalid_image_dimensions")
    assert "320x320" in body["message"] and "320x384" in body["message"]
    no_alpha = masking(any_client, "INIT_IMAGE_ALPHA")
    assert_envelope(no_alpha, 400, "invalid_mask_image")
    assert_envelope(masking(any_client, "MASK_IMAGE_GREY", mask=half_mask()), 400, "bad_request")
    no_source = any_client.post(
        SD1, data=prompt_fields(("a", 1)), files={"init_image": ("i.png", encode(INIT))}
    )
    assert_envelope(no_source, 400, "bad_request")
    odd = masking(
        any_client, "MASK_IMAGE_WHITE", init=sample_picture(300, 320), mask=half_mask(255, 300, 320)
    )
    assert_envelope(odd, 400, "invalid_height_or_width")
    bad_mask = any_client.post(
        SD1,
        data={**prompt_fields(("a", 1)), "mask_source": "MASK_IMAGE_WHITE"},
        files={"init_image": ("i.png", encode(INIT)), "mask_image": ("m.png", b"GIF89a...")},
    )
    assert assert_envelope(bad_mask, 400, "invalid_mime_type")["message"].startswith("mask_image:")


@pytest.mark.parametrize(
    ("path", "family", "pipeline_class", "size"),
    [
        (SD1, "sd1", StableDiffusionInpaintPipeline, (W, H)),
        (SDXL, "sdxl", StableDiffusionXLInpaintPipeline, (1024, 1024)),
    ],
)
def test_matches_diffusers_inpaint_then_composite(
    client: httpx.Client,
    tiny_dir: Path,
    path: str,
    family: str,
    pipeline_class: Any,
    size: tuple[int, int],
) -> None:
    width, height = size
    init = sample_picture(width, height)
    mask = half_mask(200, width, height)
    response = masking(
        client, "MASK_IMAGE_WHITE", init=init, mask=mask, path=path, seed=31, samples=2, cfg_scale=5
    )
    served = [result(response, i) for i in range(2)]
    # One row per sample with its own image, mask and generator: the pipeline samples each
    # row's image latents from that row's generator, so every image depends on its own seed
    # only (an image given once would be encoded with the first seed's generator for all).
    direct = direct_pipeline(pipeline_class, tiny_dir / family)(
        prompt="a stone wall",
        image=[init] * 2,
        mask_image=[mask] * 2,
        width=width,
        height=height,
        strength=1.0,
        num_inference_steps=10,
        guidance_scale=5.0,
        num_images_per_prompt=2,
        generator=seeded((31, 32)),
    ).images
    for ours, theirs in zip(served, direct, strict=True):
        assert np.array_equal(ours, composited(init, theirs, mask))
    # So the second image is what seed 32 alone gives (up to rounding at another batch size).
    alone = masking(
        client, "MASK_IMAGE_WHITE", init=init, mask=mask, path=path, seed=32, cfg_scale=5
    )
    assert np.abs(result(alone, 0) - served[1]).max() <= 1
