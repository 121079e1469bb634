"""POST /v1/generation/{engine_id}/image-to-image (multipart) on the tiny models, over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from diffusers import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionXLImg2ImgPipeline,
)

from tests.helpers import (
    artifact_image,
    direct_pipeline,
    encode,
    pixels,
    png_image,
    prompt_fields,
    sample_picture,
    seeded,
)
from tests.test_accounts_engines import assert_envelope

SD1 = "/v1/generation/stable-diffusion-v1-6/image-to-image"
SDXL = "/v1/generation/stable-diffusion-xl-1024-v1-0/image-to-image"
INIT = sample_picture(320, 384)
INIT_PNG = encode(INIT)


def img2img(
    client: httpx.Client,
    path: str = SD1,
    image: bytes = INIT_PNG,
    content_type: str = "image/png",
    **fields: object,
) -> httpx.Response:
    data = {**prompt_fields(("a painting of a garden", 1)), "steps": "10", **fields}
    data = {k: str(v) for k, v in data.items()}
    files = {"init_image": ("init.png", image, content_type)}
    return client.post(path, data=data, files=files)


def ok_artifacts(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    artifacts: list[dict[str, Any]] = response.json()["artifacts"]
    return artifacts


def test_output_takes_the_init_image_size(any_client: httpx.Client) -> None:
    artifacts = ok_artifacts(img2img(any_client, seed=3, samples=2))
    assert [a["seed"] for a in artifacts] == [3, 4]
    assert all(artifact_image(a).size == (320, 384) for a in artifacts)


def test_image_strength_near_one_keeps_the_image(client: httpx.Client) -> None:
    def distance(strength: float) -> float:
        image = artifact_image(ok_artifacts(img2img(client, seed=5, image_strength=strength))[0])
        return float(np.abs(pixels(image) - pixels(INIT)).mean())

    assert distance(1.0) == 0.0  # no denoising step at all: the init image itself
    assert distance(0.9) < distance(0.35) < distance(0.0)


def test_step_schedule(client: httpx.Client) -> None:
    def run(**fields: Any) -> np.ndarray:
        response = img2img(client, seed=6, init_image_mode="STEP_SCHEDULE", **fields)
        return pixels(artifact_image(ok_artifacts(response)[0]))

    assert np.array_equal(run(step_schedule_start=0), pixels(INIT))
    full = run(step_schedule_start=0.65)
    # step_schedule_start is 1 - image_strength.
    same = pixels(artifact_image(ok_artifacts(img2img(client, seed=6, image_strength=0.35))[0]))
    assert np.array_equal(full, same)
    early = run(step_schedule_start=0.65, step_schedule_end=0.3)
    assert not np.array_equal(full, early)
    assert np.array_equal(run(step_schedule_start=0.5, step_schedule_end=0.5), pixels(INIT))


def test_prompt_indexes_need_not_be_sequential_and_duplicates_override(
    client: httpx.Client,
) -> None:
    def run(fields: dict[str, str | list[str]]) -> np.ndarray:
        files = {"init_image": ("init.png", INIT_PNG, "image/png")}
        response = client.post(SD1, data={**fields, "steps": "10", "seed": "9"}, files=files)
        return pixels(artifact_image(ok_artifacts(response)[0]))

    dog = run({"text_prompts[0][text]": "a dog"})
    # A later field for the same index overrides the earlier one.
    assert np.array_equal(dog, run({"text_prompts[0][text]": ["a cat", "a dog"]}))
    sparse = run(
        {
            "text_prompts[7][text]": "a dog",
            "text_prompts[3][text]": "fog",
            "text_prompts[3][weight]": "-1",
        }
    )
    dense = run(
        {
            "text_prompts[0][text]": "a dog",
            "text_prompts[1][text]": "fog",
            "text_prompts[1][weight]": "-1",
        }
    )
    assert np.array_equal(sparse, dense)
    assert not np.array_equal(sparse, dog)


@pytest.mark.parametrize(
    ("fmt", "options", "mode"),
    [
        ("JPEG", {"quality": 95}, "RGB"),
        ("WEBP", {"lossless": True}, "RGB"),
        ("PNG", {}, "RGBA"),
        ("PNG", {}, "L"),
        ("PNG", {}, "P"),
    ],
)
def test_png_jpeg_webp_and_modes_accepted(
    client: httpx.Client, fmt: str, options: dict[str, Any], mode: str
) -> None:
    data = encode(sample_picture(320, 320, mode), fmt, **options)
    # The part's declared type is ignored: the bytes say what the file is.
    response = img2img(client, image=data, content_type="application/octet-stream", seed=2)
    assert artifact_image(ok_artifacts(response)[0]).size == (320, 320)


def test_accept_png(any_client: httpx.Client) -> None:
    response = any_client.post(
        SD1,
        data={**prompt_fields(("a garden", 1)), "steps": "10", "seed": "12"},
        files={"init_image": ("init.png", INIT_PNG, "image/png")},
        headers={"Accept": "image/png"},
    )
    assert response.status_code == 200
    assert response.headers["seed"] == "12"
    assert png_image(response.content).size == (320, 384)


def _bomb() -> bytes:
    from PIL import Image

    return encode(Image.new("1", (20000, 20000)))


UPLOAD_ERRORS: list[tuple[str, bytes, int, str, str]] = [
    ("gif", encode(sample_picture(320, 320), "GIF"), 400, "invalid_mime_type", "GIF"),
    ("text", b"hello, this is not an image", 400, "invalid_mime_type", "PNG, JPEG or WebP"),
    ("empty", b"", 400, "invalid_file_size", "empty"),
    ("truncated", INIT_PNG[: len(INIT_PNG) // 2], 400, "bad_request", "corrupt or truncated"),
    ("bomb", _bomb(), 400, "bad_request", "pixels"),
]


@pytest.mark.parametrize(
    ("case", "data", "status", "name", "words"), UPLOAD_ERRORS, ids=[c[0] for c in UPLOAD_ERRORS]
)
def test_bad_uploads(
    client: httpx.Client, case: str, data: bytes, status: int, name: str, words: str
) -> None:
    body = assert_envelope(img2img(client, image=data), status, name)
    assert body["message"].startswith("init_image:")
    assert words in body["message"]


def test_file_over_the_size_limit(client: httpx.Client) -> None:
    big = INIT_PNG + b"\0" * (10 * 1024 * 1024)
    body = assert_envelope(img2img(client, image=big), 400, "invalid_file_size")
    assert "10,485,760" in body["message"]


def test_request_shape_errors(client: httpx.Client) -> None:
    fields = {**prompt_fields(("a", 1)), "steps": "10"}
    missing = client.post(SD1, data=fields, files={"other": ("x.png", INIT_PNG)})
    assert_envelope(missing, 400, "bad_request")
    # A multipart body with text parts only (a part without filename is a text field).
    no_file = client.post(SD1, data=fields, files={"seed": (None, "1")})
    assert "init_image: is required" in assert_envelope(no_file, 400, "bad_request")["message"]
    as_json = client.post(SD1, json={"text_prompts": [{"text": "a"}]})
    assert_envelope(as_json, 400, "bad_request")
    as_text = client.post(SD1, data={**fields, "init_image": "not a file"}, files={"x": ("x", b"")})
    assert_envelope(as_text, 400, "bad_request")
    no_prompt = client.post(SD1, data={"steps": "10"}, files={"init_image": ("i.png", INIT_PNG)})
    assert_envelope(no_prompt, 400, "bad_request")
    bad_index = client.post(
        SD1, data={"text_prompts[a][text]": "x"}, files={"init_image": ("i.png", INIT_PNG)}
    )
    assert_envelope(bad_index, 400, "bad_request")
    for field, value in [
        ("image_strength", "1.5"),
        ("steps", "nine"),
        ("samples", "0"),
        ("init_image_mode", "SOMETIMES"),
        ("step_schedule_end", "-0.1"),
    ]:
        bad = {**prompt_fields(("a", 1)), field: value}
        response = client.post(SD1, data=bad, files={"init_image": ("i.png", INIT_PNG)})
        assert_envelope(response, 400, "bad_request")


def test_engine_size_rules_apply_to_the_init_image(any_client: httpx.Client) -> None:
    odd = encode(sample_picture(330, 320))
    assert_envelope(img2img(any_client, image=odd), 400, "invalid_height_or_width")
    small = encode(sample_picture(512, 512))
    body = assert_envelope(
        img2img(any_client, SDXL, image=small), 400, "invalid_sdxl_v1_dimensions"
    )
    assert "512x512" in body["message"]
    upscaler = any_client.post(
        "/v1/generation/esrgan-v1-x2plus/image-to-image",
        data=prompt_fields(("a", 1)),
        files={"init_image": ("i.png", INIT_PNG)},
    )
    assert_envelope(upscaler, 400, "bad_request")


@pytest.mark.parametrize(
    ("path", "family", "pipeline_class", "size"),
    [
        (SD1, "sd1", StableDiffusionImg2ImgPipeline, (320, 384)),
        (SDXL, "sdxl", StableDiffusionXLImg2ImgPipeline, (1216, 832)),
    ],
)
def test_matches_diffusers_img2img_pixel_for_pixel(
    client: httpx.Client,
    tiny_dir: Path,
    path: str,
    family: str,
    pipeline_class: Any,
    size: tuple[int, int],
) -> None:
    init = sample_picture(*size)
    fields = {
        **prompt_fields(("a red house", 1), ("blurry", -1)),
        "steps": "10",
        "cfg_scale": "6",
        "seed": "77",
        "samples": "2",
        "image_strength": "0.4",
    }
    response = client.post(path, data=fields, files={"init_image": ("i.png", encode(init))})
    served = [pixels(artifact_image(a)) for a in ok_artifacts(response)]
    direct = direct_pipeline(pipeline_class, tiny_dir / family)(
        prompt="a red house",
        negative_prompt="blurry",
        image=init,
        strength=0.6,
        num_inference_steps=10,
        guidance_scale=6.0,
        num_images_per_prompt=2,
        generator=seeded((77, 78)),
    ).images
    for ours, theirs in zip(served, direct, strict=True):
        assert np.array_equal(ours, pixels(theirs))
