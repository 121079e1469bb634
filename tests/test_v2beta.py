"""The v2beta Stable Image API's generate and upscale/fast endpoints through HTTP, on the tiny
models (stability-v2beta.md): multipart in, the image or JSON out, v2beta's error body.

generate/sd3 runs the tiny SD 3.5 pipelines, generate/core the tiny SDXL at Core's sizes,
generate/ultra the tiny SD 3.5 Large (docs/api.md says which open model serves what).
"""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import Deployment, Server
from tests.helpers import encode, png_image, sample_picture
from tests.test_jobs import balance

V2 = "/v2beta/stable-image"
NONE_PART = {"none": ("", b"")}  # what the official Python samples send to force multipart


def post(client: httpx.Client, route: str, files: Any = None, **headers: str) -> Any:
    def send(**fields: Any) -> httpx.Response:
        return client.post(
            f"{V2}/{route}", data=fields, files=files or NONE_PART, headers=headers or None
        )

    return send


def opened(data: bytes) -> Image.Image:
    """An answer's image, whatever its format."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def v2_error(response: httpx.Response, status: int, name: str) -> list[str]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"id", "name", "errors"}, body
    assert body["name"] == name and len(body["id"]) == 32, body
    assert body["errors"] and all(isinstance(e, str) for e in body["errors"])
    messages: list[str] = body["errors"]
    return messages


def test_sd3_answers_the_image_or_json_at_the_aspect_ratios_size(server: Server) -> None:
    bare = {"authorization": server.key}  # the key without "Bearer", as the samples send it
    with httpx.Client(base_url=server.base_url, timeout=300) as client:
        fields = {
            "prompt": "a lighthouse",
            "model": "sd3.5-large-turbo",
            "aspect_ratio": "16:9",
            "seed": "77",
            "style": "ignored",  # an unknown field, as Stability's ComfyUI node sends
        }
        image = post(client, "generate/sd3", **bare)(**fields)
        assert image.status_code == 200, image.text
        assert image.headers["content-type"] == "image/png"
        assert image.headers["finish-reason"] == "SUCCESS" and image.headers["seed"] == "77"
        assert png_image(image.content).size == (1344, 768)
        generation_id = image.headers["x-request-id"]

        as_json = post(client, "generate/sd3", **bare, accept="application/json; type=image/png")(
            **fields
        )
        assert as_json.headers["content-type"] == "application/json; type=image/png"
        body = as_json.json()
        assert set(body) == {"image", "seed", "finish_reason"}
        assert (body["seed"], body["finish_reason"]) == (77, "SUCCESS")
        assert base64.b64decode(body["image"]) == image.content  # the same generation

        webp = post(client, "generate/sd3", **bare)(
            prompt="a lighthouse", model="sd3-medium", output_format="webp", seed="5"
        )
        assert webp.headers["content-type"] == "image/webp"
        assert opened(webp.content).size == (1024, 1024)  # 1:1 by default

        # One generation like any other: v1's GET by id answers it.
        replay = client.get(
            f"/v1/generation/{generation_id}", headers={"Authorization": f"Bearer {server.key}"}
        )
        assert replay.status_code == 200 and replay.json()["artifacts"][0]["seed"] == 77


def test_core_is_sdxl_at_cores_sizes(client: httpx.Client) -> None:
    jpeg = post(client, "generate/core")(prompt="a red barn", output_format="jpeg", seed="3")
    assert jpeg.status_code == 200, jpeg.text
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert opened(jpeg.content).size == (1536, 1536)


def test_ultra_image_to_image_answers_one_megapixel(client: httpx.Client) -> None:
    picture = {"image": ("p.png", encode(sample_picture(768, 512)))}
    missing = post(client, "generate/ultra", files=picture)(prompt="a garden")
    assert v2_error(missing, 400, "bad_request") == ["strength: required with an image"]
    answer = post(client, "generate/ultra", files=picture)(
        prompt="a garden", strength="0.6", seed="9"
    )
    assert answer.status_code == 200, answer.text
    assert png_image(answer.content).size == (1216, 832)  # 3:2, the input's ratio, at 1 MP


def test_errors_come_in_the_v2beta_body(server: Server, client: httpx.Client) -> None:
    as_json = client.post(f"{V2}/generate/sd3", json={"prompt": "a cat"})
    assert v2_error(as_json, 400, "bad_request") == ["content-type: must be multipart/form-data"]
    with httpx.Client(base_url=server.base_url, timeout=60) as anonymous:
        bad_key = {"authorization": "Bearer sk-not-a-key"}
        # Validation before authentication, as the hosted API answers.
        invalid = post(anonymous, "generate/sd3", **bad_key)(prompt="")
        assert v2_error(invalid, 400, "bad_request")[0].startswith("prompt: ")
        v2_error(post(anonymous, "generate/sd3", **bad_key)(prompt="a cat"), 401, "unauthorized")
    before = balance(client)
    model = v2_error(post(client, "generate/sd3")(prompt="a cat", model="sd4"), 400, "bad_request")
    assert "sd3.5-large" in model[0] and "sd3.5-flash" in model[0]
    v2_error(post(client, "generate/sd3")(prompt="a cat", seed="4294967295"), 400, "bad_request")
    no_image = post(client, "generate/sd3")(prompt="a cat", mode="image-to-image", strength="0.5")
    assert v2_error(no_image, 400, "bad_request") == ["image: required for mode image-to-image"]
    tiny = {"image": ("t.png", encode(sample_picture(32, 32)))}
    small = post(client, "generate/ultra", files=tiny)(prompt="a cat", strength="0.5")
    assert v2_error(small, 400, "bad_request") == ["image: every side must be at least 64 pixels"]
    # The prompt filter (on in the test deployments): v2beta's 403, not charged.
    moderated = v2_error(
        post(client, "generate/core")(prompt="a nude study"), 403, "content_moderation"
    )
    assert moderated[0].startswith("Your request was flagged by our content moderation system")
    huge = {"image": ("h.png", b"\x89PNG" + b"\0" * (10 * 1024 * 1024))}
    v2_error(post(client, "generate/ultra", files=huge)(prompt="a cat"), 413, "payload_too_large")
    assert balance(client) == before


def test_the_openapi_document_has_the_v2beta_operations(client: httpx.Client) -> None:
    document = client.get("/openapi.json").json()
    for route in ("generate/ultra", "generate/core", "generate/sd3", "upscale/fast"):
        operation = document["paths"][f"{V2}/{route}"]["post"]
        assert "multipart/form-data" in operation["requestBody"]["content"]
        error = operation["responses"]["403"]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/ErrorBody"}
    schemas = document["components"]["schemas"]
    assert schemas["Sd3Request"]["properties"]["seed"]["maximum"] == 4294967294


@pytest.mark.parametrize("accept", ["image/*", "*/*"])
def test_any_image_accept_gives_bytes(client: httpx.Client, accept: str) -> None:
    answer = post(client, "generate/sd3", accept=accept)(prompt="a hill", model="sd3.5-large-turbo")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"


def test_upscale_fast_is_four_times_the_input(client: httpx.Client) -> None:
    picture = {"image": ("p.png", encode(sample_picture(96, 64)))}
    answer = post(client, "upscale/fast", files=picture)(output_format="webp")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/webp"
    assert opened(answer.content).size == (384, 256)
    assert v2_error(post(client, "upscale/fast")(), 400, "bad_request") == ["image: required"]
    narrow = {"image": ("n.png", encode(sample_picture(2048, 32)))}
    message = v2_error(post(client, "upscale/fast", files=narrow)(), 400, "bad_request")
    assert message == ["image: width and height must be between 32 and 1536"]


def test_a_model_mapped_to_an_engine_not_served_says_how(operator: Deployment) -> None:
    """[v2beta_engines] maps sd3.5-flash to an engine the deployment lacks."""
    with operator.server.client() as client:
        answer = post(client, "generate/sd3")(prompt="a cat", model="sd3.5-flash")
    [message] = v2_error(answer, 503, "engine_unavailable")
    assert message.startswith("sd3.5-flash: its engine no-such-engine is not served here")
    assert "[v2beta_engines]" in message
