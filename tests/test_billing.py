"""Credits over HTTP: price, reserve/charge/refund, 402, Organization header, concurrency.

Every test runs against a deployment on SQLite and one on a real PostgreSQL server.
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from localstability.engines import CATALOGUE
from localstability.service.pricing import cost_micros
from tests.conftest import Deployment
from tests.helpers import encode, sample_picture, t2i_body
from tests.test_accounts_engines import assert_envelope

SD1 = "stable-diffusion-v1-6"
T2I = f"/v1/generation/{SD1}/text-to-image"


def sd1_cost(width: int, height: int, steps: int, samples: int = 1) -> int:
    return cost_micros(
        CATALOGUE[SD1].cost_factor, width=width, height=height, steps=steps, samples=samples
    )


def http(deployment: Deployment, key: str, **headers: str) -> httpx.Client:
    return httpx.Client(
        base_url=deployment.server.base_url,
        headers={"Authorization": f"Bearer {key}", **headers},
        timeout=300,
    )


def new_org(deployment: Deployment, name: str, credits: float) -> str:
    return deployment.admin("orgs", "create", "--name", name, "--credits", str(credits))


def ledger(deployment: Deployment, org: str) -> dict[str, Any]:
    result: dict[str, Any] = deployment.admin_json(
        "ledger", "show", "--org", org, "--limit", "1000"
    )
    return result


def balance(client: httpx.Client) -> float:
    response = client.get("/v1/user/balance")
    assert response.status_code == 200, response.text
    credits: float = response.json()["credits"]
    return credits


def test_a_generation_is_charged_its_price_once(deployment: Deployment) -> None:
    key = deployment.new_key("price@example.com", credits=1.0)
    with http(deployment, key) as client:
        response = client.post(T2I, json=t2i_body(width=512, height=512, samples=2))
        assert response.status_code == 200, response.text
        cost = sd1_cost(512, 512, 10, samples=2)
        assert balance(client) == pytest.approx(1.0 - cost / 1e6, abs=1e-9)
        org = client.get("/v1/user/account").json()["organizations"][0]["id"]
    book = ledger(deployment, org)
    assert book["adds_up"] and book["reserved"] == 0
    kinds = [(e["kind"], round(e["credits"] * 1e6)) for e in book["entries"]]
    assert kinds == [("grant", 1_000_000), ("reserve", cost), ("charge", cost)]
    records = deployment.admin_json("ledger", "generations", "--org", org)
    assert len(records) == 1
    assert records[0]["status"] == "succeeded"
    assert records[0]["engine_id"] == SD1 and records[0]["task"] == "text-to-image"
    assert records[0]["finish_reasons"] == ["SUCCESS", "SUCCESS"]


def test_too_few_credits_is_402_and_moves_nothing(deployment: Deployment) -> None:
    cost = sd1_cost(512, 512, 10)
    key = deployment.new_key("poor@example.com", credits=(cost - 1) / 1e6)
    with http(deployment, key) as client:
        response = client.post(T2I, json=t2i_body(width=512, height=512))
        body = assert_envelope(response, 402, "insufficient_balance")
        assert "costs" in body["message"]
        assert balance(client) == pytest.approx((cost - 1) / 1e6)
        # Invalid requests are refused before any credit is held.
        assert client.post(T2I, json=t2i_body(width=100)).status_code == 400
        org = client.get("/v1/user/account").json()["organizations"][0]["id"]
    book = ledger(deployment, org)
    assert [e["kind"] for e in book["entries"]] == ["grant"]
    assert deployment.admin_json("ledger", "generations", "--org", org) == []


def test_a_failed_generation_is_refunded(deployment: Deployment) -> None:
    key = deployment.new_key("refund@example.com", credits=5.0)
    with http(deployment, key) as client:
        response = client.post(
            "/v1/generation/stable-diffusion-x4-latent-upscaler/image-to-image/upscale",
            files={"image": ("in.png", encode(sample_picture(128, 128)), "image/png")},
            data={"width": "512", "steps": "10"},
        )
        assert_envelope(response, 503, "engine_unavailable")
        assert balance(client) == pytest.approx(5.0)
        org = client.get("/v1/user/account").json()["organizations"][0]["id"]
    book = ledger(deployment, org)
    assert book["adds_up"] and book["reserved"] == 0
    assert [e["kind"] for e in book["entries"]] == ["grant", "reserve", "refund"]
    [record] = deployment.admin_json("ledger", "generations", "--org", org)
    assert record["status"] == "failed"
    assert record["error"].startswith("engine_unavailable: ")


def test_the_organization_header_picks_who_pays(deployment: Deployment) -> None:
    key = deployment.new_key("member@example.com", credits=1.0)
    team = new_org(deployment, "Team", 2.0)
    other = new_org(deployment, "Strangers", 3.0)
    deployment.admin("orgs", "add-member", "--org", team, "--email", "member@example.com")
    cost = sd1_cost(512, 512, 10)
    with http(deployment, key, Organization=team) as client:
        assert client.post(T2I, json=t2i_body(width=512, height=512)).status_code == 200
        assert balance(client) == pytest.approx(2.0 - cost / 1e6)
    with http(deployment, key) as client:
        assert balance(client) == pytest.approx(1.0)  # the default organization paid nothing
        account = client.get("/v1/user/account").json()
        assert {o["id"]: o["role"] for o in account["organizations"]}[team] == "MEMBER"
    with http(deployment, key, Organization=other) as client:
        for response in (
            client.post(T2I, json=t2i_body()),
            client.get("/v1/user/balance"),
            client.get("/v1/engines/list"),
            client.post(
                f"/v1/generation/{SD1}/image-to-image",
                files={"init_image": ("in.png", encode(sample_picture(512, 512)), "image/png")},
                data={"text_prompts[0][text]": "x"},
            ),
        ):
            assert_envelope(response, 403, "permission_denied")
    assert ledger(deployment, other)["credits"] == 3.0


def test_billing_switched_off_records_but_charges_nothing(
    tiny_dir: Any, tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    from tests.conftest import start_deployment

    free = start_deployment(
        tiny_dir, tmp_path / "free", "sqlite", request, LOCALSTABILITY_BILLING="false"
    )
    key = free.new_key("free@example.com", credits=0.0)
    with http(free, key) as client:
        assert client.post(T2I, json=t2i_body(width=512, height=512)).status_code == 200
        assert balance(client) == 0.0
        org = client.get("/v1/user/account").json()["organizations"][0]["id"]
    [record] = free.admin_json("ledger", "generations", "--org", org)
    assert record["status"] == "succeeded" and record["credits"] == 0.0
    assert [e["kind"] for e in ledger(free, org)["entries"]] == []


CLIENTS = 16
REQUESTS = 200
AFFORDABLE = 32


def test_200_requests_from_16_clients_spend_exactly_the_balance(deployment: Deployment) -> None:
    """Only AFFORDABLE of REQUESTS fit the balance: the rest get 402, and nothing is lost."""
    cost = sd1_cost(320, 320, 10)
    org = new_org(deployment, "Crowd", AFFORDABLE * cost / 1e6)
    keys = deployment.member_keys(org, CLIENTS, "crowd")
    statuses: list[int] = []
    lock = threading.Lock()

    def client_run(index: int) -> None:
        with http(deployment, keys[index]) as client:
            for n in range(index, REQUESTS, CLIENTS):
                body = t2i_body(width=320, height=320, seed=n + 1)
                response = client.post(T2I, json=body)
                if response.status_code == 200:
                    artifacts = response.json()["artifacts"]
                    assert len(artifacts) == 1 and artifacts[0]["seed"] == n + 1
                else:
                    assert_envelope(response, 402, "insufficient_balance")
                with lock:
                    statuses.append(response.status_code)

    with ThreadPoolExecutor(CLIENTS) as pool:
        for future in [pool.submit(client_run, i) for i in range(CLIENTS)]:
            future.result()

    assert len(statuses) == REQUESTS
    assert statuses.count(200) == AFFORDABLE
    assert statuses.count(402) == REQUESTS - AFFORDABLE
    book = ledger(deployment, org)
    assert book["adds_up"]
    assert book["credits"] == 0 and book["reserved"] == 0
    kinds = [e["kind"] for e in book["entries"]]
    assert kinds.count("reserve") == kinds.count("charge") == AFFORDABLE
    assert "refund" not in kinds
    assert all(e["balance_after"] >= 0 for e in book["entries"])
    records = deployment.admin_json("ledger", "generations", "--org", org, "--limit", "1000")
    assert len(records) == AFFORDABLE
    assert {r["status"] for r in records} == {"succeeded"}


def test_keys_never_reach_the_logs_or_the_database(deployment: Deployment) -> None:
    key = deployment.new_key("secret@example.com", credits=1.0)
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    with http(deployment, key) as client:
        assert client.post(T2I, json=t2i_body(width=512, height=512)).status_code == 200
    with http(deployment, wrong) as client:
        assert_envelope(client.get("/v1/user/balance"), 401, "unauthorized")
    secret = key.removeprefix("sk-")
    logs = deployment.server.logs()
    assert secret not in logs and wrong.removeprefix("sk-") not in logs
    assert secret[8:] not in logs  # not even the part after the lookup prefix
    from sqlalchemy import MetaData, create_engine, select

    url = deployment.database_url
    engine = create_engine(url)
    metadata = MetaData()
    metadata.reflect(engine)
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            for row in connection.execute(select(table)):
                assert all(secret[8:] not in str(value) for value in row), table.name
    engine.dispose()
    if url.startswith("sqlite:///"):
        data_dir = Path(deployment.env["LOCALSTABILITY_DATA_DIR"])
        for path in data_dir.glob("localstability.db*"):
            assert secret[8:].encode() not in path.read_bytes(), path.name


def test_a_killed_server_refunds_what_it_held_when_it_starts_again(
    tiny_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from localstability.store import ledger as store_ledger
    from localstability.store.db import Database
    from localstability.store.models import Generation, GenerationStatus
    from tests.conftest import start_deployment

    crash = start_deployment(tiny_dir, tmp_path / "crash", "sqlite", request)
    key = crash.new_key("crash@example.com", credits=10.0)
    with http(crash, key) as client:
        org = client.get("/v1/user/account").json()["organizations"][0]["id"]

    def slow_request() -> None:
        with http(crash, key) as client, contextlib.suppress(httpx.TransportError):
            client.post(
                "/v1/generation/stable-diffusion-xl-1024-v1-0/text-to-image",
                json=t2i_body(steps=50, samples=4),
            )

    thread = threading.Thread(target=slow_request)
    thread.start()
    database = Database(crash.database_url)
    try:
        deadline = time.monotonic() + 120
        while True:
            with database.session() as session:
                if [g for g in store_ledger.unfinished(session) if g.status == "running"]:
                    break
            assert time.monotonic() < deadline, "the generation never started"
            time.sleep(0.05)
        crash.server.process.kill()  # SIGKILL mid-run: no shutdown code runs
        crash.server.process.wait()
        thread.join()
        with database.session() as session:
            held = store_ledger.audit(session, org)
            assert held.reserved > 0 and held.adds_up
        crash.restart()
        with database.session() as session:
            check = store_ledger.audit(session, org)
            assert (check.balance, check.reserved) == (10_000_000, 0)
            assert check.adds_up and check.refunded == held.reserved
            [record] = session.query(Generation).all()
            assert record.status == GenerationStatus.FAILED
            assert record.error is not None and "interrupted" in record.error
    finally:
        database.dispose()
    with http(crash, key) as client:
        assert balance(client) == 10.0
        # The record answers for the id this new process never held.
        body = assert_envelope(
            client.get(f"/v1/generation/{record.id}"), 500, "generation_interrupted"
        )
        assert "refunded" in body["message"]
        assert client.post(T2I, json=t2i_body(width=512, height=512)).status_code == 200
