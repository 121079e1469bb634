"""What real MCP clients need, with their default settings: a full-size SDXL result (its PNG
over the 1 MiB that the Python SDK takes in one event) as a preview and a resource link that
resources/read answers, through the official Python SDK and the TypeScript SDK (npm, pinned,
installed by scripts/setup-clients.sh); tool schemas that strict Ajv compiles, every argument
described; 401s with a Bearer challenge and no OAuth to discover."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import MCPError
from mcp_types import INVALID_PARAMS, BlobResourceContents, ImageContent, ResourceLink
from PIL import Image

from localstability.mcp.results import image_uri
from tests.conftest import REPO, Deployment
from tests.helpers import png_image
from tests.test_mcp import INITIALIZE, TOOLS, http_session, rest_balance, run, succeeded

SDXL = "stable-diffusion-xl-1024-v1-0"
FULL_SIZE = {"engine_id": SDXL, "prompt": "a lighthouse", "steps": 10, "seed": 11}
ONE_MIB = 1024 * 1024
JS_DIR = REPO / "tests" / "clients" / "js"
MCP_SCRIPT = JS_DIR / "mcp_client.mjs"
SETUP_HINT = "run scripts/setup-clients.sh (or `make clients`) to install the client libraries"


@pytest.fixture(scope="module")
def deployment(mcp_deployment: Deployment) -> Deployment:
    return mcp_deployment


def rest_png(deployment: Deployment, generation_id: str, index: int = 0) -> bytes:
    """Image `index` of a generation, from the REST API (GET /v1/generation/{id})."""
    with deployment.server.client() as client:
        response = client.get(f"/v1/generation/{generation_id}")
    assert response.status_code == 200, response.text
    return base64.b64decode(response.json()["artifacts"][index]["base64"])


def typescript(deployment: Deployment, key: str, action: str, payload: Any = None) -> Any:
    """Run tests/clients/js/mcp_client.mjs: the TypeScript SDK's one JSON answer."""
    if not (JS_DIR / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir():
        pytest.fail(f"{JS_DIR / 'node_modules'} has no @modelcontextprotocol/sdk: {SETUP_HINT}")
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not on PATH: {SETUP_HINT}")
    command = [node, str(MCP_SCRIPT), f"{deployment.server.base_url}/mcp", key, action]
    if payload is not None:
        command.append(json.dumps(payload))
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output from the TypeScript client\nstderr:\n{done.stderr[-3000:]}"
    answer = json.loads(lines[-1])
    assert (done.returncode == 0) == answer["ok"], (done.returncode, answer)
    return answer


def test_a_full_size_result_reaches_the_python_sdk_as_preview_and_link(
    deployment: Deployment,
) -> None:
    key = deployment.server.key
    before = rest_balance(deployment, key)
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        # The SDK's default client: server-sent events of 1 MiB at most.
        async with http_session(deployment, key) as session:
            result = await session.call_tool("generate_image_from_text", FULL_SIZE)
            structured = succeeded(result)
            generation_id = structured["generation_id"]
            uri = image_uri(generation_id, 0)
            assert structured["artifacts"] == [
                {"seed": 11, "finishReason": "SUCCESS", "uri": uri, "preview": True}
            ]
            preview, link, _text = result.content
            assert isinstance(preview, ImageContent) and preview.mime_type == "image/jpeg"
            assert max(Image.open(io.BytesIO(base64.b64decode(preview.data))).size) == 512
            assert isinstance(link, ResourceLink)
            assert (link.uri, link.mime_type) == (uri, "image/png")
            templates = await session.list_resource_templates()
            assert [t.uri_template for t in templates.resource_templates] == [
                "localstability://generations/{generation_id}/images/{index}.png"
            ]
            read = await session.read_resource(uri)
            (blob,) = read.contents
            assert isinstance(blob, BlobResourceContents) and blob.mime_type == "image/png"
            seen.update(generation_id=generation_id, png=base64.b64decode(blob.blob), link=link)
            # A URI that names no image, or another generation's, is "not found".
            for wrong in (image_uri(generation_id, 1), image_uri("0" * 32, 0), "file:///x.png"):
                with pytest.raises(MCPError) as refused:
                    await session.read_resource(wrong)
                assert refused.value.error.code == INVALID_PARAMS
                assert refused.value.error.data["name"] == "not_found"

    run(scenario)
    png = seen["png"]
    # Its base64 alone passes the 1 MiB that one event may carry: inline, it would not arrive.
    assert len(base64.b64encode(png)) > ONE_MIB
    assert png == rest_png(deployment, seen["generation_id"])
    assert png_image(png).size == (1024, 1024) and seen["link"].size == len(png)
    # Charged once, for the one generation; reading its image costs nothing.
    assert rest_balance(deployment, key) < before
    deployment.books().assert_settled()


def test_another_organization_cannot_read_a_result(deployment: Deployment) -> None:
    other = deployment.new_key("mcp-reader@example.com", 0)

    async def scenario() -> None:
        async with http_session(deployment, deployment.server.key) as session:
            small = {"engine_id": "stable-diffusion-v1-6", "prompt": "a cat", "steps": 10}
            generation_id = succeeded(await session.call_tool("generate_image_from_text", small))[
                "generation_id"
            ]
            own = await session.read_resource(image_uri(generation_id, 0))
            assert len(own.contents) == 1
        async with http_session(deployment, other) as session:
            with pytest.raises(MCPError) as refused:
                await session.read_resource(image_uri(generation_id, 0))
            assert refused.value.error.data["name"] == "not_found"

    run(scenario)


def test_the_typescript_sdk_gets_a_full_size_result(deployment: Deployment) -> None:
    key = deployment.server.key
    listed = typescript(deployment, key, "list")
    assert set(listed["tools"]) == TOOLS
    # Every tool's input and output schema compiles in strict Ajv, draft-07 and 2020-12.
    assert listed["schema_errors"] == {}
    called = typescript(
        deployment, key, "call", {"name": "generate_image_from_text", "arguments": FULL_SIZE}
    )
    assert not called["is_error"], called
    preview, full, text = called["content"]
    assert (preview["type"], preview["mime_type"], preview["width"]) == ("image", "image/jpeg", 512)
    assert (full["type"], full["mime_type"], full["link_mime_type"]) == (
        "resource_link",
        "image/png",
        "image/png",
    )
    assert (full["width"], full["height"], full["link_size"]) == (1024, 1024, full["bytes"])
    assert text == {"type": "text"}
    generation_id = called["structured"]["generation_id"]
    assert full["sha256"] == hashlib.sha256(rest_png(deployment, generation_id)).hexdigest()
    deployment.books().assert_settled()


def test_the_typescript_sdk_shows_the_servers_message_for_a_bad_key(
    deployment: Deployment,
) -> None:
    refused = typescript(deployment, "sk-not-a-key", "connect")
    assert not refused["ok"]
    assert "invalid API key" in refused["error"], refused


def test_every_tool_argument_is_described_in_standard_json_schema(
    deployment: Deployment,
) -> None:
    async def scenario() -> None:
        async with http_session(deployment, deployment.server.key) as session:
            tools = (await session.list_tools()).tools
        for tool in tools:
            for name, schema in tool.input_schema.get("properties", {}).items():
                assert schema.get("description"), f"{tool.name}.{name} has no description"
            text = json.dumps([tool.input_schema, tool.output_schema])
            assert '"format": "float"' not in text and '"format": "double"' not in text

    run(scenario)
    # The REST API's OpenAPI document keeps its formats, as the hosted API's does.
    with deployment.server.client() as client:
        openapi = client.get("/openapi.json").text
    assert '"format":"float"' in openapi.replace(" ", "")


def test_a_401_carries_a_bearer_challenge_and_no_oauth_is_offered(
    deployment: Deployment,
) -> None:
    url = f"{deployment.server.base_url}/mcp"
    accept = {"Accept": "application/json, text/event-stream"}
    missing = httpx.post(url, json=INITIALIZE, headers=accept)
    assert missing.status_code == 401
    # RFC 6750: no credentials, no error code.
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="localstability"'
    bad = httpx.post(url, json=INITIALIZE, headers={**accept, "Authorization": "Bearer sk-x"})
    assert bad.status_code == 401
    assert bad.headers["WWW-Authenticate"] == (
        'Bearer realm="localstability", error="invalid_token", error_description="invalid API key"'
    )
    assert bad.json()["error"]["message"] == "unauthorized: invalid API key"
    base = deployment.server.base_url
    for path in (
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ):
        answer = httpx.get(base + path)
        assert answer.status_code == 404, path
        body = answer.json()
        assert body["name"] == "not_found" and "API keys, not OAuth" in body["message"]
    # Registering a client is not found either (the REST API's own 404).
    assert httpx.post(base + "/register", json={}).status_code == 404


def test_mcp_over_stdio_refuses_a_data_dir_without_a_database(
    deployment: Deployment, tmp_path: Path
) -> None:
    from localstability.testing import CLI, cli_env

    env = cli_env(
        **{**deployment.env, "LOCALSTABILITY_DATA_DIR": str(tmp_path / "wrong")},
        LOCALSTABILITY_API_KEY=deployment.server.key,
    )
    done = subprocess.run(
        [*CLI, "mcp", "--config", str(deployment.config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, done.stderr
    assert "no database at" in done.stderr and str(tmp_path / "wrong") in done.stderr
    assert not (tmp_path / "wrong").exists()  # nothing created
    assert os.path.exists(deployment.env["LOCALSTABILITY_DATA_DIR"])
