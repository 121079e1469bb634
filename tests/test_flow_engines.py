"""SD 3.5 and FLUX.1 over HTTP and MCP on their tiny fixtures (localstability.tiny_flow, served
under the catalogue ids by `models make-tiny`'s config): text-to-image, image-to-image and
masking, their size rules, samplers, negative prompts and defaults, and the rule that lists
them only once their weights are here or the operator configured them."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import httpx
import pytest

from localstability.config import Settings
from localstability.engines import CATALOGUE, Family
from localstability.protocol import TextToImageRequestBody
from localstability.service.tasks import TaskBuilder, engine_defaults
from tests.conftest import Deployment
from tests.helpers import encode, png_image, prompt_fields, sample_picture, t2i_body
from tests.test_accounts_engines import assert_envelope
from tests.test_mcp import http_session, images, succeeded

SD3 = "stable-diffusion-3-5-large"
SD3_TURBO = "stable-diffusion-3-5-large-turbo"
SD3_MEDIUM = "stable-diffusion-3-5-medium"
FLUX_DEV = "flux-1-dev"
FLUX_SCHNELL = "flux-1-schnell"
FLOW_ENGINES = [SD3, SD3_TURBO, SD3_MEDIUM, FLUX_SCHNELL, FLUX_DEV]
# The smallest sizes their rules allow (SD 3.5 Large: 0.25 megapixel; FLUX.1: 256x256).
SMALL = {SD3_TURBO: (512, 512), FLUX_DEV: (256, 256), FLUX_SCHNELL: (256, 256)}
ACCEPT_PNG = {"Accept": "image/png"}


def t2i(client: httpx.Client, engine: str, **fields: object) -> httpx.Response:
    return client.post(f"/v1/generation/{engine}/text-to-image", json=t2i_body(**fields))


def test_the_engines_list_shows_them(client: httpx.Client) -> None:
    listed = {e["id"]: e for e in client.get("/v1/engines/list").json()}
    for engine_id in FLOW_ENGINES:
        assert listed[engine_id]["name"] == CATALOGUE[engine_id].name
    assert listed[FLUX_DEV]["name"] == "FLUX.1 [dev]"
    assert CATALOGUE[FLUX_DEV].default_source == "black-forest-labs/FLUX.1-dev"
    assert CATALOGUE[SD3_TURBO].default_source == "stabilityai/stable-diffusion-3.5-large-turbo"


@pytest.mark.parametrize("engine", [SD3_TURBO, FLUX_DEV, FLUX_SCHNELL])
def test_text_to_image(client: httpx.Client, engine: str) -> None:
    width, height = SMALL[engine]
    response = t2i(client, engine, width=width, height=height, seed=11, samples=2, cfg_scale=0)
    assert response.status_code == 200, response.text
    artifacts = response.json()["artifacts"]
    assert [a["seed"] for a in artifacts] == [11, 12]
    assert artifacts[0]["base64"] != artifacts[1]["base64"]
    for artifact in artifacts:
        assert png_image(base64.b64decode(artifact["base64"])).size == (width, height)


def test_sd35_takes_negative_prompts(client: httpx.Client) -> None:
    prompts = [{"text": "a lighthouse", "weight": 1}, {"text": "fog", "weight": -1}]
    size = {"width": 256, "height": 1024, "seed": 3, "cfg_scale": 5}  # Medium's least: 0.25 MP
    plain = t2i(client, SD3_MEDIUM, **size)
    negative = t2i(client, SD3_MEDIUM, **size, text_prompts=prompts)
    for response in (plain, negative):
        assert response.status_code == 200, response.text
    pictures = [r.json()["artifacts"][0]["base64"] for r in (plain, negative)]
    assert pictures[0] != pictures[1]  # the negative prompt steers the guidance


def test_flux_has_no_negative_prompts(client: httpx.Client) -> None:
    prompts = [{"text": "a lighthouse", "weight": 1}, {"text": "fog", "weight": -0.5}]
    body = assert_envelope(
        t2i(client, FLUX_DEV, width=256, height=256, text_prompts=prompts), 400, "bad_request"
    )
    assert "takes no negative prompts" in body["message"]
    # A style preset's positive template applies; its negative half has nothing to condition.
    styled = t2i(client, FLUX_DEV, width=256, height=256, style_preset="line-art")
    assert styled.status_code == 200, styled.text


@pytest.mark.parametrize(
    ("engine", "sampler", "offered"),
    [
        (FLUX_DEV, "K_DPMPP_2M", "K_EULER,"),
        (SD3, "K_EULER_ANCESTRAL", "K_EULER, K_HEUN,"),
        (SD3, "DDIM", "K_EULER, K_HEUN,"),
    ],
)
def test_samplers_they_cant_honour_are_400(
    client: httpx.Client, engine: str, sampler: str, offered: str
) -> None:
    body = assert_envelope(t2i(client, engine, sampler=sampler), 400, "bad_request")
    assert f"offers {offered} not {sampler}" in body["message"]


@pytest.mark.parametrize(
    ("engine", "size", "name"),
    [
        (SD3, (520, 512), "invalid_height_or_width"),  # not a multiple of 16
        (SD3, (1040, 1040), "invalid_pixel_count"),  # over SD 3.5 Large's 1 megapixel
        (SD3, (256, 256), "invalid_pixel_count"),  # under its 0.25
        (FLUX_DEV, (1456, 1456), "invalid_pixel_count"),  # over FLUX.1's 2 megapixels
        (FLUX_DEV, (128, 512), "invalid_height_or_width"),  # a side under 256
    ],
)
def test_size_rules(client: httpx.Client, engine: str, size: tuple[int, int], name: str) -> None:
    assert_envelope(t2i(client, engine, width=size[0], height=size[1]), 400, name)


@pytest.mark.parametrize(
    ("engine", "size", "sampler"), [(SD3, (512, 512), "K_HEUN"), (FLUX_DEV, (272, 256), "K_EULER")]
)
def test_image_to_image_and_masking(
    client: httpx.Client, engine: str, size: tuple[int, int], sampler: str
) -> None:
    init = sample_picture(*size)
    files = {"init_image": ("init.png", encode(init), "image/png")}
    fields = {**prompt_fields(("at night", 1.0)), "steps": "10", "seed": "4"}
    response = client.post(
        f"/v1/generation/{engine}/image-to-image",
        data={**fields, "image_strength": "0.4", "sampler": sampler},
        files=files,
        headers=ACCEPT_PNG,
    )
    assert response.status_code == 200, response.text
    assert png_image(response.content).size == size
    mask = sample_picture(*size, "L").point(lambda v: 255 if v > 128 else 0)
    response = client.post(
        f"/v1/generation/{engine}/image-to-image/masking",
        data={**fields, "mask_source": "MASK_IMAGE_WHITE"},
        files={**files, "mask_image": ("mask.png", encode(mask), "image/png")},
        headers=ACCEPT_PNG,
    )
    assert response.status_code == 200, response.text
    result = png_image(response.content).convert("RGB")
    assert result.size == size
    # Kept pixels (mask 0) stay exactly the init image's.
    kept = [
        (x, y)
        for x in range(0, size[0], 7)
        for y in range(0, size[1], 7)
        if mask.getpixel((x, y)) == 0
    ]
    assert kept and all(result.getpixel(p) == init.getpixel(p) for p in kept)


def test_per_model_defaults() -> None:
    body = TextToImageRequestBody.model_validate({"text_prompts": [{"text": "a cat"}]})
    turbo = engine_defaults(CATALOGUE[SD3_TURBO], body)
    assert (turbo.steps, turbo.cfg_scale) == (10, 0.0)
    assert engine_defaults(CATALOGUE[FLUX_DEV], body).cfg_scale == 3.5
    assert engine_defaults(CATALOGUE["stable-diffusion-v1-6"], body) is body
    given = TextToImageRequestBody.model_validate(
        {"text_prompts": [{"text": "a cat"}], "steps": 20, "cfg_scale": 2}
    )
    assert engine_defaults(CATALOGUE[SD3_TURBO], given) is given


def test_listed_only_once_configured_or_present(tmp_path: Path, tiny_dir: Path) -> None:
    bare = TaskBuilder(Settings(data_dir=tmp_path, offline=True))
    served = {engine.id for engine in bare.engines()}
    assert "stable-diffusion-v1-6" in served  # the others are listed as before
    assert not served & set(FLOW_ENGINES)  # no weights here, not configured
    with pytest.raises(Exception, match="was not found"):
        bare.engine(FLUX_DEV)
    configured = TaskBuilder(
        Settings(
            data_dir=tmp_path,
            offline=True,
            engines={FLUX_DEV: {"source": str(tiny_dir / "flux")}, SD3: {}},
        )
    )
    assert {e.id for e in configured.engines()} & set(FLOW_ENGINES) == {FLUX_DEV, SD3}
    # Weights on this machine are enough: a local source that exists.
    assert configured.engine(FLUX_DEV).id == FLUX_DEV


def test_own_engines_of_these_families(tmp_path: Path, tiny_dir: Path) -> None:
    """Their family read from the folder, the rules of the family's catalogue engine."""
    engines = {
        "house-flux": {"source": str(tiny_dir / "flux-schnell")},
        "house-sd3": {"source": str(tiny_dir / "sd3")},
    }
    builder = TaskBuilder(Settings(data_dir=tmp_path, offline=True, engines=engines))
    flux, sd3 = builder.engine("house-flux"), builder.engine("house-sd3")
    assert (flux.family, flux.size_rule) == (Family.FLUX, CATALOGUE[FLUX_DEV].size_rule)
    assert (sd3.family, sd3.default_steps) == (Family.SD3, CATALOGUE[SD3].default_steps)


def test_mcp_tools(mcp_deployment: Deployment) -> None:
    key = mcp_deployment.new_key("flow-mcp@example.com", 100)
    photo = base64.b64encode(encode(sample_picture(256, 256))).decode("ascii")

    async def scenario() -> None:
        async with http_session(mcp_deployment, key) as session:
            models = succeeded(await session.call_tool("list_available_models", {}))["models"]
            assert {model["id"] for model in models} >= set(FLOW_ENGINES)
            # SD 3.5 Large Turbo with its own defaults (10 steps, no guidance).
            arguments = {"engine_id": SD3_TURBO, "prompt": "a lighthouse", "width": 512}
            result = await session.call_tool(
                "generate_image_from_text", {**arguments, "height": 512}
            )
            body = succeeded(result)  # 512x512 comes as a link and a preview, not inline
            assert body["engine_id"] == SD3_TURBO and len(body["artifacts"]) == 1
            result = await session.call_tool(
                "transform_image",
                {"engine_id": FLUX_DEV, "prompt": "at night", "init_image": photo, "steps": 10},
            )
            assert [image.size for image in images(result)] == [(256, 256)]
            result = await session.call_tool(
                "inpaint_image",
                {
                    "engine_id": FLUX_DEV,
                    "prompt": "a door",
                    "steps": 10,
                    "init_image": photo,
                    "mask_image": base64.b64encode(encode(sample_picture(256, 256, "L"))).decode(),
                    "mask_source": "MASK_IMAGE_WHITE",
                },
            )
            assert succeeded(result)["engine_id"] == FLUX_DEV
            result = await session.call_tool(
                "generate_image_from_text",
                {
                    "engine_id": FLUX_DEV,
                    "prompt": "a cat",
                    "negative_prompt": "fog",
                    "width": 256,
                    "height": 256,
                },
            )
            assert result.is_error and "takes no negative prompts" in result.content[0].text  # type: ignore[union-attr]

    asyncio.run(scenario())
