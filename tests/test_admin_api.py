"""The admin HTTP API (/admin/v1), on SQLite and PostgreSQL."""

from __future__ import annotations

import httpx

from tests.conftest import ADMIN_KEY, Deployment, Server
from tests.helpers import t2i_body
from tests.test_accounts_engines import assert_envelope


def admin_client(deployment: Deployment, key: str = ADMIN_KEY) -> httpx.Client:
    return httpx.Client(
        base_url=deployment.server.base_url + "/admin/v1",
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )


def test_admin_api_runs_an_organization_end_to_end(deployment: Deployment) -> None:
    with admin_client(deployment) as admin:
        created = admin.post("/organizations", json={"name": "Studio", "credits": 2})
        assert created.status_code == 201, created.text
        org = created.json()
        assert (org["credits"], org["reserved"], org["members"]) == (2.0, 0.0, [])
        user = admin.post(
            "/users", json={"email": "artist@studio.example", "organization_id": org["id"]}
        )
        assert user.status_code == 201, user.text
        assert user.json()["organizations"] == [
            {"id": org["id"], "name": "Studio", "role": "MEMBER", "is_default": True}
        ]
        key = admin.post("/keys", json={"email": "artist@studio.example"}).json()
        assert key["key"].startswith("sk-") and key["organization_id"] == org["id"]

        with httpx.Client(
            base_url=deployment.server.base_url,
            headers={"Authorization": f"Bearer {key['key']}"},
            timeout=300,
        ) as client:
            generated = client.post(
                "/v1/generation/stable-diffusion-v1-6/text-to-image",
                json=t2i_body(width=512, height=512),
            )
            assert generated.status_code == 200, generated.text

        grant = admin.post(f"/organizations/{org['id']}/grants", json={"credits": 3, "note": "x"})
        assert grant.status_code == 201
        assert grant.json()["kind"] == "grant" and grant.json()["actor"] == "admin-api"
        book = admin.get(f"/organizations/{org['id']}/ledger").json()
        assert book["adds_up"] is True
        assert [e["kind"] for e in book["entries"]] == ["grant", "reserve", "charge", "grant"]
        assert book["credits"] == grant.json()["balance_after"]
        [record] = admin.get(f"/organizations/{org['id']}/generations").json()
        assert record["status"] == "succeeded" and record["seconds"] > 0
        listed = admin.get("/organizations").json()
        [mine] = [o for o in listed if o["id"] == org["id"]]
        assert [m["email"] for m in mine["members"]] == ["artist@studio.example"]
        [info] = admin.get("/keys", params={"email": "artist@studio.example"}).json()
        assert key["key"].startswith(info["prefix"]) and "key" not in info
        revoked = admin.delete(f"/keys/{info['prefix']}")
        assert revoked.json() == {"revoked": 1}
        assert_envelope(admin.delete(f"/keys/{info['prefix']}"), 404, "not_found")
        refused = httpx.get(
            deployment.server.base_url + "/v1/user/balance",
            headers={"Authorization": f"Bearer {key['key']}"},
        )
        assert_envelope(refused, 401, "unauthorized")


def test_admin_api_errors_use_the_envelope(deployment: Deployment) -> None:
    with admin_client(deployment, "wrong-key") as intruder:
        assert_envelope(intruder.get("/organizations"), 401, "unauthorized")
    assert_envelope(
        httpx.get(deployment.server.base_url + "/admin/v1/organizations"), 401, "unauthorized"
    )
    with admin_client(deployment) as admin:
        assert_envelope(admin.post("/organizations", json={"name": ""}), 400, "bad_request")
        assert_envelope(admin.post("/organizations", content=b"{"), 400, "bad_request")
        assert_envelope(admin.get("/organizations/org-nope/ledger"), 404, "not_found")
        assert_envelope(
            admin.post("/organizations/org-nope/grants", json={"credits": 1}), 404, "not_found"
        )
        org = admin.post("/organizations", json={"name": "Small", "credits": 1}).json()
        below = admin.post(f"/organizations/{org['id']}/grants", json={"credits": -2})
        assert_envelope(below, 400, "bad_request")
        assert_envelope(admin.post("/users", json={"email": "not-an-email"}), 400, "bad_request")
        assert_envelope(
            admin.post(
                f"/organizations/{org['id']}/members",
                json={"email": "nobody@example.com"},
            ),
            404,
            "not_found",
        )
    assert ADMIN_KEY not in deployment.server.logs()


def test_admin_api_is_off_without_an_admin_key(server: Server) -> None:
    response = httpx.get(
        server.base_url + "/admin/v1/organizations",
        headers={"Authorization": f"Bearer {server.key}"},
    )
    body = assert_envelope(response, 404, "not_found")
    assert "admin_key" in body["message"]
