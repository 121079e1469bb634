"""LoRA adapters through HTTP and MCP: real adapter files (made with PEFT by `models make-tiny`,
in the deployment's lora_dir), named by requests, applied by their weights, never from a path,
never in a batch with other adapters, and switched without reloading the base model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from localstability.app import create_app
from localstability.config import EngineConfig, EngineLora, Settings
from localstability.service.tasks import TaskBuilder
from tests.conftest import Cluster, Deployment, Server
from tests.helpers import artifact_image, encode, pixels, sample_picture, t2i_body
from tests.test_accounts_engines import assert_envelope
from tests.test_batching import assert_matches_solo, generation_records, hold_the_device
from tests.test_jobs import ASYNC, balance, client_for, finished, wait_for
from tests.test_mcp import http_session, images, succeeded
from tests.test_metrics import moved, scrape

SD1 = "stable-diffusion-v1-6"
T2I = f"/v1/generation/{SD1}/text-to-image"
I2I = f"/v1/generation/{SD1}/image-to-image"
STYLE, DETAIL, XL_STYLE = "tiny-sd1-style", "tiny-sd1-detail", "tiny-sdxl-style"
LOADS = "localstability_model_load_seconds_count"


def small(**fields: Any) -> dict[str, Any]:
    """A 10-step text-to-image body at SD 1.6's smallest size."""
    return t2i_body(width=320, height=320, **fields)


def image_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    [artifact] = response.json()["artifacts"]
    assert artifact["finishReason"] == "SUCCESS"
    return pixels(artifact_image(artifact))


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def test_the_engines_list_gives_each_engine_the_adapters_of_its_family(
    client: httpx.Client,
) -> None:
    listed = {e["id"]: e["loras"] for e in client.get("/v1/engines/list").json()}
    assert listed[SD1] == [DETAIL, STYLE]
    assert listed["stable-diffusion-xl-1024-v1-0"] == [XL_STYLE]
    assert listed["stable-diffusion-512-v2-1"] == []  # no SD 2 adapter in the folder
    assert listed["esrgan-v1-x2plus"] == []  # adapters are for diffusion engines
    assert listed["localstability-shapes-v1"] == []  # SD 1's pipeline, not SD 1's layers


def test_an_adapter_changes_the_pixels_by_its_weight_and_only_when_asked(
    server: Server, client: httpx.Client
) -> None:
    def draw(**fields: Any) -> np.ndarray:
        return image_of(client.post(T2I, json=small(seed=7, **fields)))

    base = draw()  # the base model is loaded by now
    loads = scrape(f"{server.base_url}/metrics")
    full = draw(loras=[{"name": STYLE}])  # weight 1.0 by default
    half = draw(loras=[{"name": STYLE, "weight": 0.5}])
    both = draw(loras=[{"name": STYLE}, {"name": DETAIL, "weight": 1.0}])
    assert distance(full, base) > distance(half, base) > 0.5
    assert distance(both, full) > 0.5
    # Off unless asked: no `loras`, an empty list and a weight of 0 draw the base model's image.
    assert np.array_equal(draw(), base)
    assert np.array_equal(draw(loras=[]), base)
    assert np.array_equal(draw(loras=[{"name": STYLE, "weight": 0}]), base)
    # And on again, as before: the same adapter at the same weight, the same pixels.
    assert np.array_equal(draw(loras=[{"name": STYLE}]), full)
    # Switching adapters never loaded the base model again.
    assert moved(scrape(f"{server.base_url}/metrics"), loads, LOADS, engine=SD1) == 0


def test_image_to_image_takes_adapters_as_multipart_fields(client: httpx.Client) -> None:
    picture = {"init_image": ("init.png", encode(sample_picture(320, 320)), "image/png")}
    fields = {"text_prompts[0][text]": "a harbour", "steps": "10", "seed": "5"}
    plain = image_of(client.post(I2I, data=fields, files=picture))
    styled = client.post(
        I2I, data={**fields, "loras[0][name]": STYLE, "loras[0][weight]": "1.5"}, files=picture
    )
    assert distance(image_of(styled), plain) > 0.5
    misnamed = client.post(I2I, data={**fields, "loras[0][file]": "/tmp/x"}, files=picture)
    assert "loras[<index>][name]" in assert_envelope(misnamed, 400, "bad_request")["message"]


@pytest.mark.parametrize(
    ("loras", "name"),
    [
        ([{"name": "no-such-adapter"}], "lora_not_found"),
        ([{"name": XL_STYLE}], "lora_not_found"),  # an SDXL adapter on an SD 1.x engine
        ([{"name": "../sdxl/tiny-sdxl-style"}], "invalid_lora"),
        ([{"name": "/etc/passwd"}], "invalid_lora"),
        ([{"name": "sd1/tiny-sd1-style"}], "invalid_lora"),
        ([{"name": "https://example.com/lora.safetensors"}], "invalid_lora"),
        ([{"name": f"{STYLE}.safetensors"}], "invalid_lora"),
        ([{"name": STYLE}, {"name": STYLE, "weight": 0.5}], "invalid_lora"),
        ([{"name": STYLE, "weight": 4.5}], "bad_request"),
        ([{"name": STYLE}] * 9, "bad_request"),  # at most 8
    ],
)
def test_adapters_that_cant_be_had_are_refused_and_not_charged(
    client: httpx.Client, loras: list[dict[str, Any]], name: str
) -> None:
    before = balance(client)
    body = assert_envelope(client.post(T2I, json=small(loras=loras)), 400, name)
    if name == "lora_not_found":
        assert f"(it offers: {DETAIL}, {STYLE})" in body["message"]
    assert balance(client) == before


def test_adapters_never_share_a_batch_with_other_adapters(sqlite_deployment: Deployment) -> None:
    """Queued requests alike but for their adapters batch only with their own kind, and each
    gives the image of its solo run."""
    key = sqlite_deployment.new_key("lora-batches@example.com", credits=50.0)
    requests = {
        "lora-plain-1": small(seed=1),
        "lora-style-2": small(seed=2, loras=[{"name": STYLE}]),
        "lora-plain-3": small(seed=3),
        "lora-style-4": small(seed=4, loras=[{"name": STYLE}]),
        "lora-half-5": small(seed=5, loras=[{"name": STYLE, "weight": 0.5}]),
    }
    with client_for(sqlite_deployment, key) as client:
        blocker = hold_the_device(client)
        for name, body in requests.items():
            queued = client.post(T2I, json=body, headers={**ASYNC, "Generation-Id": name})
            assert queued.status_code == 202, queued.text
        client.delete(f"/v1/generation/{blocker}")
        done = {name: wait_for(client, name, finished) for name in requests}
        for name, body in requests.items():
            assert_matches_solo(done[name], client.post(T2I, json=body))
    records = generation_records(sqlite_deployment, key)
    assert {name: records[name]["batch_size"] for name in requests} == {
        "lora-plain-1": 2,
        "lora-plain-3": 2,
        "lora-style-2": 2,
        "lora-style-4": 2,
        "lora-half-5": 1,
    }


def test_mcp_tools_take_adapters(mcp_deployment: Deployment) -> None:
    """The MCP tools name adapters as REST does, and list_available_models gives them."""
    arguments = {"engine_id": SD1, "prompt": "a lighthouse", "steps": 10, "seed": 9}
    arguments |= {"width": 320, "height": 320}

    async def scenario() -> tuple[Any, ...]:
        async with http_session(mcp_deployment, mcp_deployment.server.key) as session:
            models = succeeded(await session.call_tool("list_available_models", {}))["models"]
            plain = await session.call_tool("generate_image_from_text", arguments)
            styled = await session.call_tool(
                "generate_image_from_text", {**arguments, "loras": [{"name": STYLE}]}
            )
            missing = await session.call_tool(
                "generate_image_from_text", {**arguments, "loras": [{"name": "nope"}]}
            )
            return models, plain, styled, missing

    models, plain, styled, missing = asyncio.run(scenario())
    assert {m["id"]: m["loras"] for m in models}[SD1] == [DETAIL, STYLE]
    [plain_image], [styled_image] = images(plain), images(styled)
    assert distance(pixels(styled_image), pixels(plain_image)) > 0.5
    with client_for(mcp_deployment, mcp_deployment.server.key) as client:
        rest = client.post(
            T2I,
            json=small(seed=9, loras=[{"name": STYLE}], text_prompts=[{"text": "a lighthouse"}]),
        )
    assert np.array_equal(image_of(rest), pixels(styled_image))
    assert missing.is_error and "lora_not_found" in missing.content[0].text


# -- an engine's own adapters ------------------------------------------------------------------


@pytest.fixture(scope="module")
def house(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """SD 1.6 on the tiny SD 1 weights, and an engine of the operator's own on the same
    weights that applies the style adapter to every request."""
    engines = {
        SD1: EngineConfig(source=str(tiny_dir / "sd1")),
        "house-style": EngineConfig(
            source=str(tiny_dir / "sd1"), loras=[EngineLora(name=STYLE, weight=0.8)]
        ),
    }
    data = tmp_path_factory.mktemp("loras") / "data"
    settings = Settings(
        data_dir=data, offline=True, log_json=False, lora_dir=tiny_dir / "loras", engines=engines
    )
    with TestClient(create_app(settings)) as client:
        key = (data / "admin-key.txt").read_text().strip()
        client.headers["Authorization"] = f"Bearer {key}"
        yield client


def test_an_engine_applies_its_own_adapters_and_a_request_may_reweigh_them(
    house: TestClient,
) -> None:
    def draw(engine: str, loras: list[dict[str, Any]] | None = None) -> np.ndarray:
        body = small(seed=3, loras=loras) if loras is not None else small(seed=3)
        answer = house.post(f"/v1/generation/{engine}/text-to-image", json=body)
        return image_of(answer)  # type: ignore[arg-type]

    styled = draw(SD1, [{"name": STYLE, "weight": 0.8}])
    assert np.array_equal(draw("house-style"), styled)
    assert np.array_equal(draw("house-style", [{"name": STYLE, "weight": 0}]), draw(SD1))
    assert np.array_equal(
        draw("house-style", [{"name": STYLE, "weight": 0.3}, {"name": DETAIL}]),
        draw(SD1, [{"name": DETAIL}, {"name": STYLE, "weight": 0.3}]),
    )


def test_an_engines_adapter_must_be_in_the_folder(tiny_dir: Path, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        lora_dir=tiny_dir / "loras",
        engines={"house": EngineConfig(source=str(tiny_dir / "sd1"), loras=[{"name": "gone"}])},
    )
    with pytest.raises(ValueError, match="its LoRA 'gone' is not in"):
        TaskBuilder(settings)
    with pytest.raises(ValidationError, match="not by a path"):
        EngineLora(name="../sd1/tiny-sd1-style")


def test_a_worker_applies_the_adapters_as_the_embedded_server_does(
    cluster: Cluster, client: httpx.Client
) -> None:
    """The job carries the adapters as plain data: through replica A a Celery worker loads
    the same file and draws the embedded server's pixels; replica B lists the adapters too."""
    body = small(seed=11, loras=[{"name": STYLE, "weight": 0.7}])
    with cluster.client(0) as a, cluster.client(1) as b:
        on_a_worker = image_of(a.post(T2I, json=body))
        listed = {e["id"]: e["loras"] for e in b.get("/v1/engines/list").json()}
    assert listed[SD1] == [DETAIL, STYLE]
    assert np.array_equal(on_a_worker, image_of(client.post(T2I, json=body)))
