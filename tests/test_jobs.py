"""Generations by id: Generation-Id, async mode, polling, events, cancellation, disconnects,
admission limits, fair order and shutdown (in-process backend, through HTTP)."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TOPOLOGIES, Deployment, Server, replica_b, start_deployment
from tests.helpers import t2i_body
from tests.test_accounts_engines import assert_envelope

SD1 = "/v1/generation/stable-diffusion-v1-6/text-to-image"
SDXL = "/v1/generation/stable-diffusion-xl-1024-v1-0/text-to-image"
ASYNC = {"Prefer": "respond-async"}
SLOW = t2i_body(steps=50, samples=2)  # tiny SDXL at 1024x1024: several seconds


@pytest.fixture(scope="module")
def jobs(sqlite_deployment: Deployment) -> Deployment:
    """The session's billed SQLite deployment (the same settings a server of this module's own
    had): the in-process backend through HTTP."""
    return sqlite_deployment


@pytest.fixture(params=TOPOLOGIES)
def topology(request: pytest.FixtureRequest, jobs: Deployment) -> Deployment:
    """This module's server of its own, then replica B of the scale-out cluster."""
    return jobs if request.param == "embedded" else replica_b(request)


def client_for(deployment: Deployment, key: str, **headers: str) -> httpx.Client:
    return httpx.Client(
        base_url=deployment.server.base_url,
        headers={"Authorization": f"Bearer {key}", **headers},
        timeout=300,
    )


def wait_for(
    client: httpx.Client,
    generation_id: str,
    done: Callable[[httpx.Response], bool],
    every_s: float = 0.05,
    within_s: float = 120,
) -> httpx.Response:
    """GET /v1/generation/{id} until `done` says so of the answer.

    While the generation is queued or running, its event stream says when to look again:
    each status event (every step and change, then its end) is put to `done` as the 202 a GET
    would answer, and once it says so (or the stream ends) a real GET is asked. So the server's
    cores run the generation instead of answering a poll every 50 ms (and the key stays under
    its rate limit). Without a stream to follow (no such generation yet, or it has ended):
    a GET every `every_s`."""
    path = f"/v1/generation/{generation_id}"
    deadline = time.monotonic() + within_s
    while True:
        response = client.get(path)
        if done(response):
            return response
        assert time.monotonic() < deadline, response.text
        if response.status_code == 202:
            _follow_events(client, path, done, deadline, every_s)
            continue  # a GET now: the event said so, or the stream ended
        time.sleep(every_s)


def _follow_events(
    client: httpx.Client,
    path: str,
    done: Callable[[httpx.Response], bool],
    deadline: float,
    every_s: float,
) -> None:
    """Read the generation's status events until one, as a 202 answer, satisfies `done`, or
    the stream ends (at once, after `every_s`, if there is no stream)."""
    with client.stream("GET", f"{path}/events") as events:
        if events.status_code != 200:
            time.sleep(every_s)
            return
        for line in events.iter_lines():
            assert time.monotonic() < deadline, line
            if line.startswith("data:"):
                view = json.loads(line.removeprefix("data:"))
                if done(httpx.Response(202, json=view)):
                    return


def running_at_step(step: int) -> Callable[[httpx.Response], bool]:
    def check(response: httpx.Response) -> bool:
        body = response.json()
        return response.status_code != 202 or (
            body["status"] == "running" and body["progress"]["step"] >= step
        )

    return check


def finished(response: httpx.Response) -> bool:
    return response.status_code != 202


def balance(client: httpx.Client) -> float:
    credits: float = client.get("/v1/user/balance").json()["credits"]
    return credits


def test_sync_answers_carry_the_id_and_get_replays_them(any_server: Server) -> None:
    with any_server.client() as client:
        sync = client.post(SD1, json=t2i_body(seed=5))
        assert sync.status_code == 200
        generation_id = sync.headers["Generation-Id"]
        assert len(generation_id) == 32
        again = client.get(f"/v1/generation/{generation_id}")
        assert again.status_code == 200 and again.json() == sync.json()
        assert again.headers["Generation-Id"] == generation_id

        chosen = client.post(SD1, json=t2i_body(seed=5), headers={"Generation-Id": "my-job.0001"})
        assert chosen.headers["Generation-Id"] == "my-job.0001"
        assert chosen.json() == sync.json()  # same request, same pixels
        png = client.get("/v1/generation/my-job.0001", headers={"Accept": "image/png"})
        assert png.headers["content-type"] == "image/png" and png.headers["Seed"] == "5"
        duplicate = client.post(SD1, json=t2i_body(), headers={"Generation-Id": "my-job.0001"})
        assert_envelope(duplicate, 409, "duplicate_generation_id")
        bad = client.post(SD1, json=t2i_body(), headers={"Generation-Id": "no spaces!"})
        assert_envelope(bad, 400, "bad_request")
        assert_envelope(client.get("/v1/generation/unknown-id-123"), 404, "not_found")
    stranger = any_server.client()
    stranger.headers["Authorization"] = "Bearer " + _new_key(any_server, "stranger@example.com")
    with stranger:
        assert_envelope(stranger.get(f"/v1/generation/{generation_id}"), 404, "not_found")
        assert_envelope(stranger.delete(f"/v1/generation/{generation_id}"), 404, "not_found")


def _new_key(server: Server, email: str) -> str:
    from tests.conftest import admin_cli

    return admin_cli(server.env, "keys", "create", "--email", email, "--config", str(server.config))


def test_async_mode_polls_to_the_same_images_and_streams_progress(any_server: Server) -> None:
    with any_server.client() as client:
        accepted = client.post(SD1, json=t2i_body(seed=9, samples=2), headers=ASYNC)
        assert accepted.status_code == 202
        body = accepted.json()
        generation_id = body["id"]
        assert accepted.headers["Location"] == f"/v1/generation/{generation_id}"
        assert accepted.headers["Preference-Applied"] == "respond-async"
        assert body["status"] in ("queued", "running") and body["progress"]["total"] == 10

        events: list[dict[str, Any]] = []
        with client.stream("GET", f"/v1/generation/{generation_id}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line.removeprefix("data:").strip()))
        assert events[-1]["status"] == "succeeded"
        steps = [e["progress"]["step"] for e in events if e["status"] == "running"]
        assert steps == sorted(steps) and steps[-1] == 10

        done = wait_for(client, generation_id, finished)
        assert done.status_code == 200
        sync = client.post(SD1, json=t2i_body(seed=9, samples=2))
        assert done.json() == sync.json()
        # A finished generation's stream gives its final state and ends.
        with client.stream("GET", f"/v1/generation/{generation_id}/events") as stream:
            lines = [line for line in stream.iter_lines() if line.startswith("data:")]
        assert [json.loads(line[5:])["status"] for line in lines] == ["succeeded"]
        png = client.get(f"/v1/generation/{generation_id}", headers={"Accept": "image/png"})
        assert_envelope(png, 400, "invalid_samples")


def test_cancel_stops_a_running_generation_within_a_step_and_refunds(topology: Deployment) -> None:
    key = topology.new_key("cancel@example.com", credits=10.0)
    with client_for(topology, key) as client:
        generation_id = client.post(SDXL, json=SLOW, headers=ASYNC).json()["id"]
        seen = wait_for(client, generation_id, running_at_step(2)).json()
        cancelled = client.delete(f"/v1/generation/{generation_id}")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        # Stopped at the step after the one running when the cancel came (or the next).
        assert cancelled.json()["progress"]["step"] <= seen["progress"]["step"] + 2
        assert cancelled.json()["progress"]["step"] < 50
        assert_envelope(client.get(f"/v1/generation/{generation_id}"), 409, "generation_cancelled")
        assert balance(client) == 10.0
        org = client.get("/v1/user/account").json()["organizations"][0]["id"]
    book = topology.admin_json("ledger", "show", "--org", org)
    assert [e["kind"] for e in book["entries"]] == ["grant", "reserve", "refund"]
    [record] = topology.admin_json("ledger", "generations", "--org", org)
    assert record["status"] == "cancelled"


def test_a_sync_request_whose_generation_is_cancelled_gets_409(topology: Deployment) -> None:
    key = topology.new_key("waiter@example.com", credits=10.0)
    answers: list[httpx.Response] = []

    def sync_request() -> None:
        with client_for(topology, key, **{"Generation-Id": "waited-on-0001"}) as client:
            answers.append(client.post(SDXL, json=SLOW))

    thread = threading.Thread(target=sync_request)
    thread.start()
    with client_for(topology, key) as client:
        wait_for(client, "waited-on-0001", lambda r: r.status_code != 404 and running_at_step(1)(r))
        assert client.delete("/v1/generation/waited-on-0001").json()["status"] == "cancelled"
        thread.join(60)
        [answer] = answers
        body = assert_envelope(answer, 409, "generation_cancelled")
        assert "refunded" in body["message"]
        assert answer.headers["Generation-Id"] == "waited-on-0001"
        assert balance(client) == 10.0


def test_a_client_that_disconnects_cancels_its_generation(jobs: Deployment) -> None:
    key = jobs.new_key("leaver@example.com", credits=10.0)
    with client_for(jobs, key, **{"Generation-Id": "abandoned-0001"}) as leaver:
        leaver.timeout = httpx.Timeout(2.0)
        with pytest.raises(httpx.ReadTimeout):
            leaver.post(SDXL, json=SLOW)
    with client_for(jobs, key) as client:
        final = wait_for(client, "abandoned-0001", finished)
        assert_envelope(final, 409, "generation_cancelled")
        assert balance(client) == 10.0


def test_round_robin_across_organizations(jobs: Deployment) -> None:
    heavy = jobs.new_key("heavy@example.com", credits=50.0)
    light = jobs.new_key("light@example.com", credits=50.0)
    fast = t2i_body(width=512, height=512)
    with client_for(jobs, heavy, **ASYNC) as h, client_for(jobs, light, **ASYNC) as li:
        blocker = h.post(SDXL, json=SLOW).json()["id"]
        wait_for(h, blocker, running_at_step(1))
        ids = {
            name: client.post(SD1, json=fast, headers={"Generation-Id": name}).json()["id"]
            for name, client in (
                ("heavy-job-2", h),
                ("heavy-job-3", h),
                ("heavy-job-4", h),
                ("light-job-1", li),
                ("light-job-2", li),
            )
        }
        positions = {
            name: (h if name.startswith("heavy") else li).get(f"/v1/generation/{name}").json()
            for name in ids
        }
        assert {n: p["queue_position"] for n, p in positions.items()} == {
            "heavy-job-2": 0,
            "light-job-1": 1,
            "heavy-job-3": 2,
            "light-job-2": 3,
            "heavy-job-4": 4,
        }
        h.delete(f"/v1/generation/{blocker}")
        for name in ids:
            wait_for(h if name.startswith("heavy") else li, name, finished)
    order = _start_order(jobs, list(ids))
    assert order == ["heavy-job-2", "light-job-1", "heavy-job-3", "light-job-2", "heavy-job-4"]


def _start_order(deployment: Deployment, ids: list[str]) -> list[str]:
    from localstability.store.db import Database
    from localstability.store.models import Generation

    database = Database(deployment.database_url)
    try:
        with database.session() as session:
            rows = session.query(Generation).filter(Generation.id.in_(ids)).all()
            assert all(r.started_at is not None for r in rows)
            return [r.id for r in sorted(rows, key=lambda r: r.started_at or 0)]
    finally:
        database.dispose()


def test_admission_limits(tiny_dir: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    limited = start_deployment(
        tiny_dir,
        tmp_path / "limited",
        "sqlite",
        request,
        LOCALSTABILITY_MAX_QUEUED_JOBS="3",
        LOCALSTABILITY_MAX_JOBS_PER_ORGANIZATION="2",
    )
    one, two, three = (limited.new_key(f"user{i}@example.com", credits=50.0) for i in range(3))
    with (
        client_for(limited, one, **ASYNC) as a,
        client_for(limited, two, **ASYNC) as b,
        client_for(limited, three, **ASYNC) as c,
    ):
        first = a.post(SDXL, json=SLOW).json()["id"]
        wait_for(a, first, running_at_step(1))
        a.post(SD1, json=t2i_body())
        capped = a.post(SD1, json=t2i_body())
        assert_envelope(capped, 429, "too_many_jobs")
        assert capped.headers["Retry-After"] == "1"
        b.post(SD1, json=t2i_body())
        b.post(SD1, json=t2i_body())
        full = c.post(SD1, json=t2i_body())
        assert_envelope(full, 503, "queue_full")
        assert full.headers["Retry-After"] == "5"
        before = balance(c)
        assert before == 50.0  # refused before anything was reserved
        a.delete(f"/v1/generation/{first}")


def test_shutdown_cancels_and_refunds_what_cannot_finish(
    tiny_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    stopping = start_deployment(
        tiny_dir, tmp_path / "stop", "sqlite", request, LOCALSTABILITY_SHUTDOWN_GRACE_S="1"
    )
    key = stopping.new_key("late@example.com", credits=10.0)
    with client_for(stopping, key, **ASYNC) as client:
        running = client.post(SDXL, json=SLOW).json()["id"]
        queued = client.post(SDXL, json=SLOW).json()["id"]
        wait_for(client, running, running_at_step(1))
        org = client.get("/v1/user/account").json()["organizations"][0]["id"]
    stopping.server.process.terminate()  # SIGTERM
    # uvicorn shuts down gracefully, then re-raises the signal for the exit status.
    assert stopping.server.process.wait(60) in (0, -signal.SIGTERM)
    logs = stopping.server.logs()
    assert "Application shutdown complete." in logs and "Traceback" not in logs
    book = stopping.admin_json("ledger", "show", "--org", org)
    assert book["adds_up"] and book["credits"] == 10.0 and book["reserved"] == 0
    records = {
        r["id"]: r["status"] for r in stopping.admin_json("ledger", "generations", "--org", org)
    }
    assert records == {running: "cancelled", queued: "cancelled"}


def test_shutdown_lets_a_short_generation_finish(
    tiny_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    stopping = start_deployment(tiny_dir, tmp_path / "finish", "sqlite", request)
    key = stopping.new_key("patient@example.com", credits=10.0)
    with client_for(stopping, key, **ASYNC) as client:
        accepted = client.post(SD1, json=t2i_body(width=512, height=512)).json()
        org = client.get("/v1/user/account").json()["organizations"][0]["id"]
    stopping.server.process.terminate()
    assert stopping.server.process.wait(60) in (0, -signal.SIGTERM)
    [record] = stopping.admin_json("ledger", "generations", "--org", org)
    assert (record["id"], record["status"]) == (accepted["id"], "succeeded")
    assert stopping.admin_json("ledger", "show", "--org", org)["adds_up"]
    # Started again, the server has the record but not the images: 410, not 404.
    stopping.restart()
    with client_for(stopping, key) as client:
        gone = client.get(f"/v1/generation/{accepted['id']}")
        assert_envelope(gone, 410, "result_expired")
        assert gone.headers["Generation-Id"] == accepted["id"]
