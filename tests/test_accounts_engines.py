"""GET /v1/engines/list, /v1/user/account, /v1/user/balance and authentication, over HTTP."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any, Protocol

import httpx
import pytest

from tests.conftest import Server, run_cli

ENGINE_IDS = [
    "localstability-shapes-v1",
    "stable-diffusion-v1-6",
    "stable-diffusion-512-v2-1",
    "stable-diffusion-xl-1024-v1-0",
    "stable-diffusion-xl-beta-v2-2-2",
    # Listed because the test config configures their tiny fixtures (tests/test_flow_engines.py).
    "stable-diffusion-3-5-large",
    "stable-diffusion-3-5-large-turbo",
    "stable-diffusion-3-5-medium",
    "flux-1-schnell",
    "flux-1-dev",
    "esrgan-v1-x2plus",
    "stable-diffusion-x4-latent-upscaler",
]


class AnyResponse(Protocol):
    """An httpx response, or a TestClient one."""

    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


def assert_envelope(response: AnyResponse, status: int, name: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"id", "name", "message"}, body
    assert body["name"] == name, body
    assert body["id"] and body["message"]
    return body


def test_engines_list(client: httpx.Client) -> None:
    response = client.get("/v1/engines/list")
    assert response.status_code == 200
    engines = response.json()
    assert [e["id"] for e in engines] == ENGINE_IDS
    for engine in engines:
        assert set(engine) == {"id", "name", "description", "type", "loras"}
        assert engine["type"] == "PICTURE"
    by_id = {e["id"]: e for e in engines}
    assert by_id["stable-diffusion-xl-1024-v1-0"]["name"] == "Stable Diffusion XL v1.0"
    assert by_id["esrgan-v1-x2plus"]["description"] == "Real-ESRGAN_x2plus upscaler model"


def test_account_and_balance(client: httpx.Client) -> None:
    account = client.get("/v1/user/account").json()
    assert account["id"].startswith("user-")
    assert "@" in account["email"]
    assert len(account["organizations"]) == 1
    org = account["organizations"][0]
    assert set(org) == {"id", "name", "role", "is_default"}
    assert org["is_default"] is True
    # The first key's 1000 credits, less what other tests on this server spent.
    balance = client.get("/v1/user/balance").json()
    assert set(balance) == {"credits"}
    assert 0 < balance["credits"] <= 1000


@pytest.mark.parametrize("path", ["/v1/engines/list", "/v1/user/account", "/v1/user/balance"])
def test_missing_or_bad_key_is_401(server: Server, path: str) -> None:
    missing = httpx.get(server.base_url + path)
    body = assert_envelope(missing, 401, "unauthorized")
    assert body["message"] == "missing authorization header"
    bad = httpx.get(server.base_url + path, headers={"Authorization": "Bearer sk-not-a-key"})
    assert_envelope(bad, 401, "unauthorized")
    empty = httpx.get(server.base_url + path, headers={"Authorization": "Bearer"})
    assert_envelope(empty, 401, "unauthorized")


def test_bare_key_and_lowercase_bearer_accepted(server: Server) -> None:
    for header in (server.key, f"bearer {server.key}", f"Bearer   {server.key}"):
        response = httpx.get(
            server.base_url + "/v1/user/balance", headers={"Authorization": header}
        )
        assert response.status_code == 200, header


def test_keys_create_and_organization_header(server: Server) -> None:
    created = run_cli(
        "keys",
        "create",
        "--email",
        "bob@example.com",
        "--credits",
        "12.5",
        "--config",
        str(server.config),
    )
    bob_key = created.stdout.strip().splitlines()[-1]
    assert bob_key.startswith("sk-")
    bob = {"Authorization": f"Bearer {bob_key}"}
    assert httpx.get(server.base_url + "/v1/user/balance", headers=bob).json() == {"credits": 12.5}
    bob_org = httpx.get(server.base_url + "/v1/user/account", headers=bob).json()["organizations"][
        0
    ]["id"]
    # Bob may name his own organization, not the admin's; the admin may not name Bob's.
    own = httpx.get(server.base_url + "/v1/user/balance", headers={**bob, "Organization": bob_org})
    assert own.json() == {"credits": 12.5}
    with server.client(Organization=bob_org) as admin:
        assert_envelope(admin.get("/v1/user/balance"), 403, "permission_denied")
        assert_envelope(admin.get("/v1/engines/list"), 403, "permission_denied")
        denied = admin.post("/v1/generation/stable-diffusion-v1-6/text-to-image", json={})
        assert_envelope(denied, 403, "permission_denied")
    # The key is stored hashed: it never appears in the database file.
    database = (server.config.parent / "data" / "localstability.db").read_bytes()
    assert bob_key.encode() not in database
    assert server.key.encode() not in database
    assert bob_key not in server.logs()


def test_unknown_route_gets_envelope(client: httpx.Client) -> None:
    assert_envelope(client.get("/v1/nothing-here"), 404, "not_found")
    assert_envelope(client.delete("/v1/engines/list"), 405, "method_not_allowed")


def test_the_api_docs_pages_work_offline(client: httpx.Client) -> None:
    # Swagger UI and ReDoc load their scripts from the server itself, nothing from outside.
    for page, script in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = client.get(page)
        assert html.status_code == 200 and f'"/docs/assets/{script}"' in html.text, html.text
        outside = re.findall(r"https?://[^\s\"'<>]+", html.text)
        assert not outside, outside
        asset = client.get(f"/docs/assets/{script}")
        assert asset.status_code == 200 and len(asset.content) > 500_000
    assert client.get("/docs/assets/swagger-ui.css").status_code == 200


def test_health_and_readiness_need_no_key_and_tell_nothing_secret(any_server: Server) -> None:
    with httpx.Client(base_url=any_server.base_url, timeout=60) as anonymous:
        alive = anonymous.get("/healthz")
        assert alive.status_code == 200 and alive.json() == {"status": "ok"}
        ready = anonymous.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert set(body) == {"status", "database", "jobs", "workers", "engines"}
    assert (body["status"], body["database"], body["jobs"]) == ("ready", "ok", "ok")
    assert body["workers"] >= 1  # this process (embedded), or the live workers (two-replica)
    assert body["engines"]["localstability-shapes-v1"] == "ready"  # shipped in the package
    assert set(body["engines"].values()) == {"ready"}  # the tiny models are all here
    # No path, host, key or error text: engine ids and states only.
    assert "/" not in ready.text and any_server.key not in ready.text


def test_one_access_log_line_per_request_without_key_or_prompt(any_server: Server) -> None:
    generation_id = f"access-log-{uuid.uuid4().hex[:12]}"
    prompt = f"a lighthouse {uuid.uuid4().hex}"
    body = {"text_prompts": [{"text": prompt}], "steps": 10, "seed": 5}
    with any_server.client(**{"Generation-Id": generation_id}) as client:
        made = client.post("/v1/generation/stable-diffusion-v1-6/text-to-image", json=body)
        assert made.status_code == 200, made.text
        org = client.get("/v1/user/account").json()["organizations"][0]["id"]
        client.get(f"/v1/generation/{generation_id}")
    deadline = time.monotonic() + 10
    while True:  # the line is written once the answer has gone
        logs = any_server.logs()
        lines = [
            json.loads(line)
            for line in logs.splitlines()
            if line.startswith("{") and '"message": "request"' in line and generation_id in line
        ]
        if len(lines) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    post, get = lines
    assert {k: post[k] for k in ("method", "route", "status", "generation", "engine")} == {
        "method": "POST",
        "route": "/v1/generation/{engine_id}/text-to-image",
        "status": 200,
        "generation": generation_id,
        "engine": "stable-diffusion-v1-6",
    }
    assert post["organization"] == org
    assert post["queue_wait_ms"] >= 0 and 0 < post["inference_ms"] < post["ms"]
    by_id = "/v1/generation/{generation_id}"
    assert (get["route"], get["status"], get["engine"]) == (by_id, 200, None)
    assert get["queue_wait_ms"] is None and get["inference_ms"] is None  # a read, not a run
    assert any_server.key not in logs and prompt not in logs


def test_openapi_describes_the_v1_paths_and_bodies(client: httpx.Client) -> None:
    document = client.get("/openapi.json").json()
    generation = "/v1/generation/{engine_id}"
    # Our extensions (docs/api.md): generations by id under /v1, the admin API under /admin/v1;
    # and v2beta (tests/test_v2beta.py).
    assert all(p.startswith(("/v1/", "/admin/v1/", "/v2beta/")) for p in document["paths"])
    assert {p for p in document["paths"] if p.startswith("/v1/")} == {
        "/v1/generation/{generation_id}",
        "/v1/generation/{generation_id}/events",
        "/v1/engines/list",
        "/v1/user/account",
        "/v1/user/balance",
        f"{generation}/text-to-image",
        f"{generation}/image-to-image",
        f"{generation}/image-to-image/masking",
        f"{generation}/image-to-image/upscale",
    }
    # Bad input is a 400 in the spec's envelope: no FastAPI 422 anywhere.
    assert not [
        (path, method)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if "422" in operation.get("responses", {})
    ]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    text_to_image = document["paths"][f"{generation}/text-to-image"]["post"]
    body = text_to_image["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/TextToImageRequestBody"}
    schemas = document["components"]["schemas"]
    assert schemas["TextToImageRequestBody"]["properties"]["steps"]["default"] == 30
    masking = document["paths"][f"{generation}/image-to-image/masking"]["post"]
    assert "multipart/form-data" in masking["requestBody"]["content"]
    assert set(schemas["MaskSource"]["enum"]) == {
        "MASK_IMAGE_WHITE",
        "MASK_IMAGE_BLACK",
        "INIT_IMAGE_ALPHA",
    }
