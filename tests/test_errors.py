"""Every failure of text-to-image gets the spec's envelope with the right status and name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from localstability.app import create_app
from localstability.config import EngineConfig, Settings
from tests.conftest import Server
from tests.helpers import t2i_body
from tests.test_accounts_engines import assert_envelope

SD1 = "/v1/generation/stable-diffusion-v1-6/text-to-image"
SD2 = "/v1/generation/stable-diffusion-512-v2-1/text-to-image"
SDXL = "/v1/generation/stable-diffusion-xl-1024-v1-0/text-to-image"
SDXL_BETA = "/v1/generation/stable-diffusion-xl-beta-v2-2-2/text-to-image"

BAD_BODIES: list[tuple[str, Any]] = [
    ("no text_prompts", {"steps": 10}),
    ("empty text_prompts", {"text_prompts": []}),
    ("text_prompts not a list", {"text_prompts": "a cat"}),
    ("prompt without text", {"text_prompts": [{"weight": 1}]}),
    ("prompt over 2000 characters", {"text_prompts": [{"text": "a" * 2001}]}),
    ("weight not a number", {"text_prompts": [{"text": "a", "weight": "heavy"}]}),
    ("only negative prompts", {"text_prompts": [{"text": "a", "weight": -1}]}),
    (
        "weights adding up past a float",
        {"text_prompts": [{"text": "a", "weight": 1e308}, {"text": "b", "weight": 1e308}]},
    ),
    ("boolean seed", t2i_body(seed=False)),
    ("boolean weight", {"text_prompts": [{"text": "a", "weight": True}]}),
    ("cfg_scale too high", t2i_body(cfg_scale=35.5)),
    ("cfg_scale negative", t2i_body(cfg_scale=-1)),
    ("steps too few", t2i_body(steps=9)),
    ("steps too many", t2i_body(steps=51)),
    ("samples zero", t2i_body(samples=0)),
    ("samples eleven", t2i_body(samples=11)),
    ("seed negative", t2i_body(seed=-1)),
    ("seed over uint32", t2i_body(seed=4294967296)),
    ("seed fractional", t2i_body(seed=1.5)),
    ("unknown sampler", t2i_body(sampler="K_MAGIC")),
    ("unknown style", t2i_body(style_preset="watercolour")),
    ("unknown clip preset", t2i_body(clip_guidance_preset="FASTEST")),
    ("extras not an object", t2i_body(extras=[1, 2])),
    ("width not a number", t2i_body(width="wide")),
    ("body is a list", [t2i_body()]),
]


@pytest.mark.parametrize(("case", "body"), BAD_BODIES, ids=[c for c, _ in BAD_BODIES])
def test_invalid_bodies_are_bad_request(client: httpx.Client, case: str, body: Any) -> None:
    message = assert_envelope(client.post(SD1, json=body), 400, "bad_request")["message"]
    assert message


def test_validation_message_names_the_field(client: httpx.Client) -> None:
    message = assert_envelope(client.post(SD1, json=t2i_body(steps=99)), 400, "bad_request")[
        "message"
    ]
    assert message.startswith("steps:")


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinities_are_bad_request(client: httpx.Client, token: str) -> None:
    raw = '{"text_prompts":[{"text":"a"}],"cfg_scale":' + token + "}"
    response = client.post(SD1, content=raw, headers={"Content-Type": "application/json"})
    assert_envelope(response, 400, "bad_request")
    weight = '{"text_prompts":[{"text":"a","weight":' + token + "}]}"
    response = client.post(SD1, content=weight, headers={"Content-Type": "application/json"})
    assert_envelope(response, 400, "bad_request")


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (b'"a string"', "application/json"),
        (b"\xff\xfe\x00", "application/json"),
        (b'{"text_prompts":[{"text":"a"}]}', "text/plain"),
        (b"text_prompts[0][text]=a", "application/x-www-form-urlencoded"),
        (b"--x\r\n\r\n--x--", "multipart/form-data; boundary=x"),
    ],
)
def test_malformed_json_and_wrong_content_type(
    client: httpx.Client, content: bytes, content_type: str
) -> None:
    response = client.post(SD1, content=content, headers={"Content-Type": content_type})
    assert_envelope(response, 400, "bad_request")


SIZE_ERRORS = [
    (SD1, 1000, 512, "invalid_height_or_width"),
    (SD1, 512, 100, "invalid_height_or_width"),
    (SD1, 256, 512, "invalid_height_or_width"),
    (SD1, 1600, 512, "invalid_height_or_width"),
    (SD2, 256, 256, "invalid_pixel_count"),
    (SD2, 1024, 1280, "invalid_pixel_count"),
    (SD2, 500, 512, "invalid_height_or_width"),
    (SDXL, 512, 512, "invalid_sdxl_v1_dimensions"),
    (SDXL, 1024, 576, "invalid_sdxl_v1_dimensions"),
    (SDXL, 832, 1152, "invalid_sdxl_v1_dimensions"),
    (SDXL, 1000, 1000, "invalid_sdxl_v1_dimensions"),
    (SDXL_BETA, 640, 640, "invalid_sdxl_v222_dimensions"),
    (SDXL_BETA, 1024, 512, "invalid_sdxl_v222_dimensions"),
    (SDXL_BETA, 64, 512, "invalid_height_or_width"),
    (SDXL_BETA, 500, 512, "invalid_height_or_width"),
]


@pytest.mark.parametrize(("path", "width", "height", "name"), SIZE_ERRORS)
def test_engine_size_rules(
    client: httpx.Client, path: str, width: int, height: int, name: str
) -> None:
    response = client.post(path, json=t2i_body(width=width, height=height))
    message = assert_envelope(response, 400, name)["message"]
    assert f"{width}x{height}" in message


def test_sdxl_message_lists_the_nine_sizes(client: httpx.Client) -> None:
    response = client.post(SDXL, json=t2i_body(width=1024, height=576))
    message = assert_envelope(response, 400, "invalid_sdxl_v1_dimensions")["message"]
    assert message == (
        "for stable-diffusion-xl-1024-v1-0 the allowed dimensions are 1024x1024, 1152x896, "
        "1216x832, 1344x768, 1536x640, 640x1536, 768x1344, 832x1216, 896x1152, "
        "but we received 1024x576"
    )


def test_png_with_several_samples_is_invalid_samples(client: httpx.Client) -> None:
    response = client.post(
        SD1, json=t2i_body(width=320, height=320, samples=2), headers={"Accept": "image/png"}
    )
    assert_envelope(response, 400, "invalid_samples")


def test_unknown_engine_is_404_naming_it(client: httpx.Client) -> None:
    response = client.post("/v1/generation/stable-diffusion-v1/text-to-image", json=t2i_body())
    body = assert_envelope(response, 404, "not_found")
    assert body["message"] == "The specified engine (ID stable-diffusion-v1) was not found."


def test_upscaler_engine_cannot_make_images_from_text(client: httpx.Client) -> None:
    response = client.post("/v1/generation/esrgan-v1-x2plus/text-to-image", json=t2i_body())
    assert "text-to-image" in assert_envelope(response, 400, "bad_request")["message"]


def test_authentication_comes_before_the_body(server: Server) -> None:
    response = httpx.post(
        server.base_url + SD1, content=b"{broken", headers={"Content-Type": "application/json"}
    )
    assert_envelope(response, 401, "unauthorized")
    unknown = httpx.post(server.base_url + "/v1/generation/nope/text-to-image", json={})
    assert_envelope(unknown, 401, "unauthorized")


def test_error_ids_are_unique(client: httpx.Client) -> None:
    ids = {client.post(SD1, json={}).json()["id"] for _ in range(5)}
    assert len(ids) == 5


def _in_process_client(tmp_path: Path, engines: dict[str, EngineConfig]) -> TestClient:
    settings = Settings(data_dir=tmp_path / "data", offline=True, log_json=False, engines=engines)
    return TestClient(create_app(settings), raise_server_exceptions=False)


def test_engine_without_weights_names_engine_and_remedy(tmp_path: Path) -> None:
    engines = {
        "stable-diffusion-v1-6": EngineConfig(source=str(tmp_path / "no-such-folder")),
        "stable-diffusion-512-v2-1": EngineConfig(source="someone/not-downloaded-model"),
        "stable-diffusion-xl-1024-v1-0": EngineConfig(source=str(tmp_path / "missing.safetensors")),
    }
    with _in_process_client(tmp_path, engines) as app_client:
        key = (tmp_path / "data" / "admin-key.txt").read_text().strip()
        headers = {"Authorization": f"Bearer {key}"}
        for engine_id, size in (
            ("stable-diffusion-v1-6", 512),
            ("stable-diffusion-512-v2-1", 512),
            ("stable-diffusion-xl-1024-v1-0", 1024),
        ):
            response = app_client.post(
                f"/v1/generation/{engine_id}/text-to-image",
                json=t2i_body(width=size, height=size),
                headers=headers,
            )
            body = assert_envelope(response, 503, "engine_unavailable")
            assert engine_id in body["message"]
            assert f"localstability models pull {engine_id}" in body["message"]
            assert "Traceback" not in body["message"]
            assert "stacktrace" not in body["message"], body["message"]  # none to see
        readiness = app_client.get("/readyz").json()  # no key needed
        assert readiness["status"] == "ready"  # it serves the engines that have weights
        assert readiness["engines"]["stable-diffusion-v1-6"] == "missing"
        assert readiness["engines"]["localstability-shapes-v1"] == "ready"


def test_a_load_error_that_points_at_a_traceback_gives_its_cause_instead() -> None:
    # What diffusers raises when the Hub can't be asked and the files are not cached.
    from localstability.inference.loader import reason_of

    try:
        try:
            raise ConnectionError("Cannot reach https://huggingface.co/api/models/a/b: offline")
        except ConnectionError as cause:
            raise OSError(
                "Cannot load model a/b: the model is not fully cached locally and an error "
                "occurred while trying to fetch metadata from the Hub. Please check out the root "
                "cause in the stacktrace above."
            ) from cause
    except OSError as exc:
        reason = reason_of(exc)
    assert "stacktrace" not in reason
    assert reason.startswith("OSError: Cannot load model a/b: the model is not fully cached")
    assert reason.endswith(
        "its cause: ConnectionError: Cannot reach https://huggingface.co/api/models/a/b: offline"
    )


def test_disabled_engine_is_not_listed_and_not_found(tmp_path: Path) -> None:
    engines = {"stable-diffusion-512-v2-1": EngineConfig(enabled=False)}
    with _in_process_client(tmp_path, engines) as app_client:
        key = (tmp_path / "data" / "admin-key.txt").read_text().strip()
        headers = {"Authorization": f"Bearer {key}"}
        listed = [e["id"] for e in app_client.get("/v1/engines/list", headers=headers).json()]
        assert "stable-diffusion-512-v2-1" not in listed
        assert len(listed) == 6
        response = app_client.post(SD2, json=t2i_body(), headers=headers)
        assert_envelope(response, 404, "not_found")


def test_unexpected_failure_is_500_server_error_logged_with_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with _in_process_client(tmp_path, {}) as app_client:
        app = app_client.app

        def broken() -> None:
            raise RuntimeError("boom")

        app.add_api_route("/v1/test-broken", broken)  # type: ignore[attr-defined]
        response = app_client.get("/v1/test-broken")
    body = assert_envelope(response, 500, "server_error")
    assert body["message"] == "An unexpected server error occurred, please try again."
    assert "boom" not in body["message"]
    logged = [r for r in caplog.records if getattr(r, "error_id", None) == body["id"]]
    assert logged and logged[0].exc_info is not None
