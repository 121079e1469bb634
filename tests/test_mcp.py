"""The MCP endpoint with the official MCP client: Streamable HTTP at /mcp and `localstability
mcp` over stdio, every tool on the tiny models, errors with the REST envelope's names, keys
and credits as on the REST API."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import INVALID_PARAMS, CallToolResult, ImageContent, TextContent

from localstability.testing import CLI, cli_env
from tests.conftest import TOPOLOGIES, Deployment, replica_b
from tests.helpers import encode, pixels, png_image, sample_picture, t2i_body

SD1 = "stable-diffusion-v1-6"
SDXL_BETA = "stable-diffusion-xl-beta-v2-2-2"
ESRGAN = "esrgan-v1-x2plus"
TOOLS = {
    "generate_image_from_text",
    "transform_image",
    "upscale_image",
    "inpaint_image",
    "list_available_models",
}
SD1_FAST = {"engine_id": SD1, "steps": 10}  # image tools: the init image's size
SD1_SMALL = {**SD1_FAST, "width": 320, "height": 320}


@pytest.fixture(scope="module")
def deployment(mcp_deployment: Deployment) -> Deployment:
    """A billed server of the MCP tests, every engine's weights present."""
    return mcp_deployment


@pytest.fixture(params=TOPOLOGIES)
def topology(request: pytest.FixtureRequest, deployment: Deployment) -> Deployment:
    """The MCP tests' server, then replica B of the scale-out cluster."""
    return deployment if request.param == "embedded" else replica_b(request)


@pytest.fixture(scope="module")
def poor_key(deployment: Deployment) -> str:
    """A key of an organization with no credits."""
    return deployment.new_key("mcp-poor@example.com", 0)


def b64_png(width: int, height: int, mode: str = "RGB") -> str:
    return base64.b64encode(encode(sample_picture(width, height, mode))).decode("ascii")


def images(result: CallToolResult) -> list[Any]:
    """The result's PNG images, checked to be PNGs."""
    blocks = [block for block in result.content if isinstance(block, ImageContent)]
    assert all(block.mime_type == "image/png" for block in blocks)
    return [png_image(base64.b64decode(block.data)) for block in blocks]


def succeeded(result: CallToolResult) -> dict[str, Any]:
    """The structured result of a successful call (the same JSON as its text content)."""
    assert not result.is_error, result.content
    text = next(block.text for block in result.content if isinstance(block, TextContent))
    assert json.loads(text) == result.structured_content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def envelope(result: CallToolResult, name: str) -> dict[str, Any]:
    """A tool error: its text is the REST API's envelope, named `name`."""
    assert result.is_error, result.content
    assert [block.type for block in result.content] == ["text"]
    body: dict[str, Any] = json.loads(result.content[0].text)  # type: ignore[union-attr]
    assert set(body) == {"id", "name", "message"}, body
    assert body["name"] == name, body
    assert body["id"] and body["message"]
    return body


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


@asynccontextmanager
async def http_session(deployment: Deployment, key: str | None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http,
        streamable_http_client(f"{deployment.server.base_url}/mcp", http_client=http) as streams,
        ClientSession(*streams) as session,
    ):
        await session.initialize()
        yield session


@asynccontextmanager
async def stdio_session(
    deployment: Deployment, errlog: Path, **env: str
) -> AsyncIterator[ClientSession]:
    server = StdioServerParameters(
        command=CLI[0],
        args=[*CLI[1:], "mcp", "--config", str(deployment.config)],
        env=cli_env(**deployment.env, **env),
    )
    with errlog.open("w") as log:
        async with (
            stdio_client(server, errlog=log) as streams,
            ClientSession(*streams) as session,
        ):
            await session.initialize()
            yield session


class Progress:
    """A progress_callback: each notification's (progress, total, message)."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, float | None, str | None]] = []

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.seen.append((progress, total, message))

    def assert_steps(self, steps: int) -> None:
        """One notification a denoising step at most, growing, to `steps` of `steps`."""
        progress = [p for p, _, _ in self.seen]
        assert progress and progress == sorted(set(progress)) and progress[-1] == steps
        assert {(total, message) for _, total, message in self.seen} == {(steps, "running")}


def rest_balance(deployment: Deployment, key: str) -> float:
    with deployment.server.client() as client:
        client.headers["Authorization"] = f"Bearer {key}"
        response = client.get("/v1/user/balance")
    assert response.status_code == 200, response.text
    credits: float = response.json()["credits"]
    return credits


def test_every_tool_over_streamable_http(topology: Deployment) -> None:
    key = topology.server.key
    before = rest_balance(topology, key)
    photo = b64_png(320, 320)

    async def scenario() -> Any:
        async with http_session(topology, key) as session:
            listed = {tool.name: tool for tool in (await session.list_tools()).tools}
            assert set(listed) == TOOLS
            t2i = listed["generate_image_from_text"]
            assert set(t2i.input_schema["required"]) == {"prompt", "engine_id"}
            assert t2i.input_schema["properties"]["steps"]["minimum"] == 10  # the REST rule
            assert t2i.output_schema is not None and t2i.description is not None
            assert SD1 in t2i.description and ESRGAN not in t2i.description
            assert listed["list_available_models"].annotations.read_only_hint  # type: ignore[union-attr]

            models = succeeded(await session.call_tool("list_available_models", {}))["models"]
            by_id = {model["id"]: model for model in models}
            assert by_id[ESRGAN]["tools"] == ["upscale_image"]
            assert by_id[SD1]["tools"] == [
                "generate_image_from_text",
                "transform_image",
                "inpaint_image",
            ]
            assert by_id[SD1]["type"] == "PICTURE"

            progress = Progress()
            result = await session.call_tool(
                "generate_image_from_text",
                {**SD1_SMALL, "prompt": "a lighthouse", "negative_prompt": "fog", "seed": 42},
                progress_callback=progress,
            )
            progress.assert_steps(10)
            body = succeeded(result)
            assert body["engine_id"] == SD1 and body["generation_id"]
            # Small enough to come inline: the PNG itself, and its URI all the same.
            assert body["artifacts"] == [
                {
                    "seed": 42,
                    "finishReason": "SUCCESS",
                    "uri": f"localstability://generations/{body['generation_id']}/images/0.png",
                    "preview": False,
                }
            ]
            [image] = images(result)
            assert image.size == (320, 320)
            generated = pixels(image)

            result = await session.call_tool(
                "generate_image_from_text",
                {
                    "engine_id": SDXL_BETA,
                    "prompt": "a red bicycle",
                    "width": 128,
                    "height": 128,
                    "steps": 10,
                    "seed": 7,
                    "samples": 2,
                    "style_preset": "line-art",
                },
            )
            assert [a["seed"] for a in succeeded(result)["artifacts"]] == [7, 8]
            assert [image.size for image in images(result)] == [(128, 128)] * 2

            result = await session.call_tool(
                "transform_image",
                {**SD1_FAST, "prompt": "at night", "init_image": photo, "image_strength": 0.5},
            )
            succeeded(result)
            assert [image.size for image in images(result)] == [(320, 320)]

            result = await session.call_tool(
                "inpaint_image",
                {
                    **SD1_FAST,
                    "prompt": "a door",
                    "init_image": f"data:image/png;base64,{photo}",
                    "mask_image": b64_png(320, 320, "L"),
                    "mask_source": "MASK_IMAGE_WHITE",
                    "seed": 5,
                },
            )
            assert succeeded(result)["artifacts"][0]["seed"] == 5
            assert [image.size for image in images(result)] == [(320, 320)]

            result = await session.call_tool(
                "upscale_image", {"engine_id": ESRGAN, "image": b64_png(64, 64)}
            )
            assert succeeded(result)["engine_id"] == ESRGAN
            assert [image.size for image in images(result)] == [(128, 128)]
        return generated

    generated = asyncio.run(scenario())
    # The same request over REST makes the same pixels: one code path.
    with topology.server.client() as client:
        response = client.post(
            f"/v1/generation/{SD1}/text-to-image",
            json=t2i_body(
                text_prompts=[{"text": "a lighthouse"}, {"text": "fog", "weight": -1}],
                width=320,
                height=320,
                seed=42,
            ),
            headers={"Accept": "image/png"},
        )
    assert response.status_code == 200, response.text
    assert (pixels(png_image(response.content)) == generated).all()
    # Every call was charged to the key's organization, and the books add up.
    assert rest_balance(topology, key) < before
    topology.books().assert_settled()


def test_errors_carry_the_envelope(deployment: Deployment, poor_key: str) -> None:
    prompt = {"prompt": "a cat"}
    gif = encode(sample_picture(64, 64), "GIF")

    async def scenario() -> None:
        async with http_session(deployment, deployment.server.key) as session:

            async def fails(tool: str, arguments: dict[str, Any], name: str) -> str:
                message: str = envelope(await session.call_tool(tool, arguments), name)["message"]
                return message

            await fails(
                "generate_image_from_text", {**prompt, "engine_id": "no-such-engine"}, "not_found"
            )
            await fails(
                "generate_image_from_text",
                {**prompt, **SD1_SMALL, "width": 300},
                "invalid_height_or_width",
            )
            await fails(
                "generate_image_from_text",
                {**prompt, "engine_id": SDXL_BETA, "width": 1024, "height": 1024, "steps": 10},
                "invalid_sdxl_v222_dimensions",
            )
            message = await fails(
                "generate_image_from_text", {**prompt, **SD1_SMALL, "steps": 5}, "bad_request"
            )
            assert message.startswith("steps:")
            message = await fails(
                "generate_image_from_text", {**prompt, **SD1_SMALL, "stepz": 20}, "bad_request"
            )
            assert "stepz" in message
            await fails("generate_image_from_text", {"engine_id": SD1}, "bad_request")
            await fails(
                "transform_image",
                {**prompt, **SD1_FAST, "init_image": "not base64!"},
                "bad_request",
            )
            await fails(
                "transform_image",
                {**prompt, **SD1_FAST, "init_image": base64.b64encode(gif).decode()},
                "invalid_mime_type",
            )
            await fails(
                "inpaint_image",
                {
                    **prompt,
                    **SD1_FAST,
                    "init_image": b64_png(320, 320),
                    "mask_source": "MASK_IMAGE_BLACK",
                },
                "invalid_mask_image",
            )
            await fails(
                "upscale_image", {"engine_id": SD1, "image": b64_png(64, 64)}, "bad_request"
            )
            await fails(
                "upscale_image",
                {"engine_id": ESRGAN, "image": b64_png(64, 64), "width": 512, "height": 512},
                "bad_request",
            )

            with pytest.raises(MCPError) as unknown:  # not a tool's failure: a protocol error
                await session.call_tool("no_such_tool", {})
            assert unknown.value.code == INVALID_PARAMS

        async with http_session(deployment, poor_key) as session:
            result = await session.call_tool("generate_image_from_text", {**prompt, **SD1_SMALL})
            envelope(result, "insufficient_balance")
            # Free tools work with no credits.
            assert not (await session.call_tool("list_available_models", {})).is_error

    run(scenario)


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"},
    },
}


def test_http_needs_a_valid_key(deployment: Deployment) -> None:
    url = f"{deployment.server.base_url}/mcp"
    initialize = INITIALIZE
    accept = {"Accept": "application/json, text/event-stream"}
    bad = {**accept, "Authorization": "Bearer sk-not-a-key"}
    for response in (
        httpx.post(url, json=initialize, headers=accept),
        httpx.post(url, json=initialize, headers=bad),
        httpx.get(url, headers=bad),
    ):
        # The REST status, and a JSON-RPC error carrying the REST envelope.
        assert response.status_code == 401, response.text
        error = response.json()["error"]
        assert error["data"]["name"] == "unauthorized" and error["data"]["id"]
        assert error["message"] == f"unauthorized: {error['data']['message']}"

    def unauthorized(error: MCPError) -> bool:
        return bool(error.data["name"] == "unauthorized")

    async def scenario() -> None:
        # The SDK's client raises the JSON-RPC error (inside its task groups' exception groups).
        refused = pytest.RaisesExc(MCPError, check=unauthorized)
        with pytest.RaisesGroup(refused, flatten_subgroups=True):
            async with http_session(deployment, "sk-not-a-key"):
                pass

    run(scenario)


def test_a_session_belongs_to_the_key_that_opened_it(deployment: Deployment, poor_key: str) -> None:
    url = f"{deployment.server.base_url}/mcp"
    accept = {"Accept": "application/json, text/event-stream"}
    owner = {**accept, "Authorization": f"Bearer {deployment.server.key}"}
    opened = httpx.post(url, json=INITIALIZE, headers=owner)
    assert opened.status_code == 200, opened.text
    session = {"Mcp-Session-Id": opened.headers["Mcp-Session-Id"]}
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert httpx.post(url, json=initialized, headers={**owner, **session}).status_code == 202
    list_tools = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    other = {**accept, "Authorization": f"Bearer {poor_key}", **session}
    assert httpx.post(url, json=list_tools, headers=other).status_code == 404
    listed = httpx.post(url, json=list_tools, headers={**owner, **session})
    assert listed.status_code == 200 and "generate_image_from_text" in listed.text
    assert httpx.delete(url, headers={**owner, **session}).status_code == 200


def test_a_cancelled_call_cancels_its_generation(deployment: Deployment) -> None:
    key = deployment.server.key
    before = rest_balance(deployment, key)
    slow = {  # tiny SDXL at 1024x1024: several seconds
        "engine_id": "stable-diffusion-xl-1024-v1-0",
        "prompt": "a slow lighthouse",
        "steps": 50,
        "samples": 2,
    }

    async def scenario() -> None:
        async with http_session(deployment, key) as session:
            with anyio.move_on_after(2) as waited:
                await session.call_tool("generate_image_from_text", slow)
            assert waited.cancelled_caught  # the client gave up (notifications/cancelled)

    run(scenario)
    deadline = time.monotonic() + 60
    while rest_balance(deployment, key) != before:  # refunded
        assert time.monotonic() < deadline
        time.sleep(0.2)
    books = deployment.books()
    assert "cancelled" in {record.status for record in books.records.values()}
    books.assert_settled()
    # The call's log line says how it ended.
    calls = [
        json.loads(line) for line in deployment.server.logs().splitlines() if '"tool call"' in line
    ]
    assert {"tool": "generate_image_from_text", "outcome": "cancelled"}.items() <= {
        key: value
        for call in calls
        if call["outcome"] == "cancelled"
        for key, value in call.items()
    }.items()


def test_stdio_serves_the_tools_for_a_key(deployment: Deployment, tmp_path: Path) -> None:
    key = deployment.server.key

    async def scenario() -> None:
        errlog = tmp_path / "mcp-stdio.log"
        async with stdio_session(deployment, errlog, LOCALSTABILITY_API_KEY=key) as session:
            assert {tool.name for tool in (await session.list_tools()).tools} == TOOLS
            progress = Progress()
            result = await session.call_tool(
                "generate_image_from_text",
                {**SD1_SMALL, "prompt": "a lighthouse", "seed": 3},
                progress_callback=progress,
            )
            progress.assert_steps(10)
            [artifact] = succeeded(result)["artifacts"]
            assert (artifact["seed"], artifact["finishReason"]) == (3, "SUCCESS")
            assert [image.size for image in images(result)] == [(320, 320)]
            progress = Progress()
            result = await session.call_tool(
                "upscale_image",
                {"engine_id": ESRGAN, "image": b64_png(64, 64)},
                progress_callback=progress,
            )
            progress.assert_steps(1)  # an upscale's units are its tiles: one here
            assert [image.size for image in images(result)] == [(128, 128)]
            envelope(
                await session.call_tool(
                    "generate_image_from_text", {"prompt": "a cat", "engine_id": "nope"}
                ),
                "not_found",
            )

    run(scenario)
    deployment.books().assert_settled()


def test_stdio_refuses_a_missing_or_bad_key(deployment: Deployment) -> None:
    import subprocess

    command = [*CLI, "mcp", "--config", str(deployment.config)]
    missing = subprocess.run(
        command, capture_output=True, text=True, env=cli_env(**deployment.env), timeout=120
    )
    assert missing.returncode == 2 and "LOCALSTABILITY_API_KEY" in missing.stderr
    bad = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=cli_env(**deployment.env, LOCALSTABILITY_API_KEY="sk-not-a-key"),
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert bad.returncode == 1 and "unauthorized" in bad.stderr, bad.stderr
    assert bad.stdout == ""  # nothing on the protocol's stream
