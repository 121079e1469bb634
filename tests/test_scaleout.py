"""The celery backend through HTTP: real Redis and PostgreSQL (started by the tests on
loopback ports, stopped by PID), two API replicas and two workers on the tiny models.
A generation asked of one replica is answered, watched and cancelled through the other; a
worker killed mid-job leaves the job ended once (re-run elsewhere, or refunded) and every
ledger adding up."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from localstability.testing import RedisServer, ServerProcess, start_server
from tests.conftest import ADMIN_KEY, Cluster, Deployment
from tests.helpers import t2i_body
from tests.test_batching import assert_matches_solo, generation_records
from tests.test_jobs import balance, finished, running_at_step
from tests.test_jobs import wait_for as poll

SD1 = "/v1/generation/stable-diffusion-v1-6/text-to-image"
SDXL = "/v1/generation/stable-diffusion-xl-1024-v1-0/text-to-image"
ASYNC = {"Prefer": "respond-async"}
SLOW = t2i_body(steps=50, samples=2)  # tiny SDXL at 1024x1024: several seconds


def wait_for(
    client: httpx.Client, generation_id: str, done: Callable[[httpx.Response], bool]
) -> httpx.Response:
    # Every 0.2 s: the rate limit (150 / 10 s) counts both replicas together here.
    return poll(client, generation_id, done, every_s=0.2, within_s=180)


def test_a_sync_request_gives_the_embedded_servers_bytes(
    cluster: Cluster, server: ServerProcess
) -> None:
    body = t2i_body(seed=21)
    with cluster.client(0) as a, cluster.client(1) as b, server.client() as embedded:
        answer = a.post(SD1, json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json() == embedded.post(SD1, json=body).json()
        # Replica B answers for it: the record, the shared store.
        again = b.get(f"/v1/generation/{answer.headers['Generation-Id']}")
        assert again.status_code == 200 and again.json() == answer.json()
        png = a.post(SD1, json=body, headers={"Accept": "image/png"})
        assert png.status_code == 200
        assert png.content == base64.b64decode(answer.json()["artifacts"][0]["base64"])
    cluster.deployment.books().assert_settled()


def test_async_through_one_replica_polled_and_streamed_through_the_other(
    cluster: Cluster,
) -> None:
    with cluster.client(0, **ASYNC) as a, cluster.client(1) as b:
        accepted = a.post(SDXL, json=t2i_body(steps=20))
        assert accepted.status_code == 202, accepted.text
        generation_id = accepted.json()["id"]
        steps = []
        with b.stream("GET", f"/v1/generation/{generation_id}/events") as events:
            assert events.status_code == 200
            for line in events.iter_lines():
                if line.startswith("data:"):
                    view = json.loads(line[5:])
                    steps.append(view["progress"]["step"])
                    if view["status"] in ("succeeded", "failed", "cancelled"):
                        assert view["status"] == "succeeded"
                        break
        assert steps[-1] == 20 and steps == sorted(steps)
        done = wait_for(b, generation_id, finished)
        assert done.status_code == 200 and len(done.json()["artifacts"]) == 1
    cluster.deployment.books().assert_settled()


def test_cancel_through_the_other_replica_stops_the_running_job(cluster: Cluster) -> None:
    with cluster.client(0, **ASYNC) as a, cluster.client(1) as b:
        before = balance(a)
        accepted = a.post(SDXL, json=SLOW)
        generation_id = accepted.json()["id"]
        wait_for(b, generation_id, running_at_step(2))
        cancelled = b.delete(f"/v1/generation/{generation_id}")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        assert cancelled.json()["progress"]["step"] < 50
        gone = a.get(f"/v1/generation/{generation_id}")
        assert gone.status_code == 409 and gone.json()["name"] == "generation_cancelled"
        assert balance(b) == before
    cluster.deployment.books().assert_settled()


def test_a_queued_job_cancelled_never_runs_and_the_queue_bound_counts_every_replica(
    cluster: Cluster,
) -> None:
    with cluster.client(0, **ASYNC) as a, cluster.client(1) as b:
        before = balance(a)
        # Both workers busy, then one more: it waits in the queue.
        busy = [a.post(SDXL, json=SLOW).json()["id"] for _ in range(2)]
        queued = b.post(SDXL, json=SLOW, headers=ASYNC)
        assert queued.status_code == 202
        generation_id = queued.json()["id"]
        assert b.get(f"/v1/generation/{generation_id}").json()["status"] == "queued"
        # A third replica whose queue bound is 1 counts the job queued through B.
        bounded = start_server(
            cluster.config,
            cluster.directory / "replica-c.log",
            env={**cluster.env, "LOCALSTABILITY_MAX_QUEUED_JOBS": "1"},
        )
        try:
            with bounded.client() as c:
                full = c.post(SD1, json=t2i_body(steps=10))
                assert full.status_code == 503 and full.json()["name"] == "queue_full"
                assert full.headers["Retry-After"] == "5"
        finally:
            bounded.stop()
        cancelled = a.delete(f"/v1/generation/{generation_id}")
        assert cancelled.json()["status"] == "cancelled"
        for other in busy:
            a.delete(f"/v1/generation/{other}")
        for other in busy:
            wait_for(a, other, finished)
        assert balance(a) == before
    books = cluster.deployment.books()
    books.assert_settled()
    assert books.records[generation_id].status == "cancelled"


def test_the_per_organization_cap_holds_across_replicas(cluster: Cluster) -> None:
    with cluster.client(0, **ASYNC) as a, cluster.client(1, **ASYNC) as b:
        ids = [a.post(SDXL, json=SLOW).json()["id"], b.post(SDXL, json=SLOW).json()["id"]]
        ids.append(a.post(SDXL, json=SLOW).json()["id"])
        refused = b.post(SDXL, json=SLOW)  # the fourth in flight: the cap is 3
        assert refused.status_code == 429 and refused.json()["name"] == "too_many_jobs"
        for generation_id in ids:
            b.delete(f"/v1/generation/{generation_id}")
        for generation_id in ids:
            wait_for(a, generation_id, finished)
    cluster.deployment.books().assert_settled()


def test_a_worker_killed_mid_job_ends_the_job_once(cluster: Cluster) -> None:
    with cluster.client(0, **ASYNC) as a:
        before = balance(a)
        accepted = a.post(SDXL, json=t2i_body(steps=40))
        generation_id = accepted.json()["id"]
        wait_for(a, generation_id, running_at_step(2))
        # Both workers die (one of them mid-job); a new one comes up.
        for worker in cluster.workers:
            worker.kill()
        cluster.workers.clear()
        cluster.add_worker("worker-3")
        # The broker delivers it again once unacknowledged for the visibility timeout; the
        # new worker claims it once the dead one is past runner_timeout_s, and runs it.
        done = wait_for(a, generation_id, finished)
        assert done.status_code == 200, done.text
        assert balance(a) < before  # charged, once (the books below)
    books = cluster.deployment.books()
    books.assert_settled()
    cluster.add_worker("worker-4")


def test_the_rate_limit_counts_both_replicas(cluster: Cluster) -> None:
    key = cluster.deployment.new_key("scaleout-rate@example.com", 1)
    with cluster.client(0, key) as a, cluster.client(1, key) as b:
        answers = [(a if i % 2 else b).get("/v1/user/balance") for i in range(150)]
        assert {r.status_code for r in answers} == {200}
        refused = a.get("/v1/user/balance")  # the 151st in the window, on either replica
        assert refused.status_code == 429 and refused.json()["name"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1
        assert b.get("/v1/user/balance").status_code == 429


def test_operators_see_the_workers_and_queues(cluster: Cluster) -> None:
    from localstability.testing import run_cli

    with cluster.client(1, ADMIN_KEY) as b:
        shown = b.get("/admin/v1/cluster")
    assert shown.status_code == 200, shown.text
    info = shown.json()
    assert info["backend"] == "celery"
    assert len(info["workers"]) == len(cluster.workers)
    assert {w["pid"] for w in info["workers"]} == {w.process.pid for w in cluster.workers}
    assert all(w["seen_s_ago"] < 10 and w["engines"] for w in info["workers"])
    assert "stable-diffusion-xl-1024-v1-0" in {q["engine_id"] for q in info["queues"]}
    listed = run_cli("cluster", "--config", str(cluster.config), "--json", env=cluster.env)
    assert {w["pid"] for w in json.loads(listed.stdout)["workers"]} == {
        w.process.pid for w in cluster.workers
    }
    table = run_cli("cluster", "--config", str(cluster.config), env=cluster.env).stdout
    assert table.startswith(f"workers: {len(cluster.workers)}")


def test_mcp_through_a_replica(cluster: Cluster) -> None:
    import asyncio

    from tests.test_mcp import Progress, http_session, images, succeeded

    replica_b = Deployment(cluster.replicas[1], cluster.env, cluster.config)

    async def scenario() -> None:
        async with http_session(replica_b, replica_b.server.key) as session:
            progress = Progress()
            result = await session.call_tool(
                "generate_image_from_text",
                {
                    "engine_id": "stable-diffusion-v1-6",
                    "prompt": "a cat",
                    "steps": 10,
                    "seed": 4,
                    "width": 320,
                    "height": 320,
                },
                progress_callback=progress,
            )
            progress.assert_steps(10)  # the worker's steps, through Redis
            assert succeeded(result)["artifacts"][0]["seed"] == 4
            assert [image.size for image in images(result)] == [(320, 320)]

    asyncio.run(scenario())
    cluster.deployment.books().assert_settled()


def test_an_api_replica_killed_mid_request_loses_nothing(cluster: Cluster) -> None:
    import threading

    generation_id = "replica-dies-0001"
    with cluster.client(1) as b:
        before = balance(b)

    def ask() -> None:  # a sync request through replica A, which dies while the job runs
        with (
            contextlib.suppress(httpx.HTTPError),
            cluster.client(0, **{"Generation-Id": generation_id}) as a,
        ):
            a.post(SDXL, json=t2i_body(steps=30))

    asking = threading.Thread(target=ask)
    asking.start()
    with cluster.client(1) as b:
        wait_for(b, generation_id, lambda r: r.status_code != 404 and running_at_step(2)(r))
        cluster.replicas[0].process.kill()
        cluster.replicas[0].process.wait()
        asking.join(60)
        # The job ran on; replica B answers with its images, charged once.
        done = wait_for(b, generation_id, finished)
        assert done.status_code == 200, done.text
        assert balance(b) < before
    replica = start_server(cluster.config, cluster.directory / "replica-a2.log", env=cluster.env)
    cluster.replicas[0] = replica
    cluster.deployment = Deployment(replica, cluster.env, cluster.config)
    cluster.deployment.books().assert_settled()


def test_redis_restarted_without_its_data_charges_nothing_twice(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    key = cluster.deployment.new_key("scaleout-redis@example.com", 100)
    with cluster.client(0, key, **ASYNC) as a:
        # Two jobs run (one on each worker) and a third waits in the queue.
        running = [a.post(SDXL, json=t2i_body(steps=20)).json()["id"] for _ in "12"]
        for generation_id in running:
            wait_for(a, generation_id, running_at_step(2))
        queued = a.post(SDXL, json=t2i_body(steps=20)).json()["id"]
        assert a.get(f"/v1/generation/{queued}").json()["status"] == "queued"
        down: list[httpx.Response] = []
        not_ready: list[httpx.Response] = []

        def ask_while_down() -> None:
            down.append(a.post(SD1, json=t2i_body(steps=10)))
            down.append(a.get(f"/v1/generation/{queued}"))
            not_ready.append(httpx.get(f"{cluster.replicas[0].base_url}/readyz", timeout=60))

        # The board, the queues, the stored images: all gone. Meanwhile: a named 503.
        redis_server.restart(ask_while_down)
        for answer in down:
            assert answer.status_code == 503, answer.text
            assert answer.json()["name"] == "queue_unavailable"
            assert answer.headers["Retry-After"] == "5"
        [readiness] = not_ready  # the load balancer is told, without a key
        assert readiness.status_code == 503
        assert {k: readiness.json()[k] for k in ("status", "database", "jobs")} == {
            "status": "not_ready",
            "database": "ok",
            "jobs": "unavailable",
        }
        # The running jobs run on without Redis' help and end once; their records answer for
        # them. The queued one went with the queue: refunded, and said so.
        answers = {}
        for generation_id in [*running, queued]:
            deadline = time.monotonic() + 180
            while (answer := a.get(f"/v1/generation/{generation_id}")).status_code == 202:
                assert time.monotonic() < deadline, answer.text
                time.sleep(0.5)
            answers[generation_id] = answer
        for generation_id in running:  # charged once, their images kept
            assert answers[generation_id].status_code == 200, answers[generation_id].text
        lost = answers[queued]
        assert lost.status_code == 500 and lost.json()["name"] == "generation_interrupted"
        assert "the job queue lost it" in lost.json()["message"]
    cluster.deployment.books().assert_settled()
    # Both replicas and the workers serve again.
    for replica in (0, 1):
        with cluster.client(replica, key) as client:
            again = client.post(SD1, json=t2i_body(steps=10))
            assert again.status_code == 200, again.text


def test_an_api_replica_never_loads_torch(cluster: Cluster) -> None:
    # After every test above (sync, async, SSE, cancel, MCP went through the replicas).
    for replica in cluster.replicas:
        maps = Path(f"/proc/{replica.process.pid}/maps").read_text()
        assert "libtorch" not in maps and "diffusers" not in maps
    for worker in cluster.workers:
        assert "libtorch" in Path(f"/proc/{worker.process.pid}/maps").read_text()


def test_a_light_organization_goes_before_a_heavy_ones_backlog(cluster: Cluster) -> None:
    heavy = cluster.deployment.new_key("scaleout-heavy@example.com", 100)
    light = cluster.deployment.new_key("scaleout-light@example.com", 100)
    with cluster.client(0, heavy, **ASYNC) as a, cluster.client(1, light, **ASYNC) as b:
        # The heavy organization fills both workers and queues one more (its cap is 3).
        # One long job and a shorter one (seconds: both are busy when the next two come):
        # the shorter one's worker frees first, while the long one holds the other worker.
        long, short = t2i_body(steps=50, samples=4), t2i_body(steps=30)
        first = [a.post(SD1, json=long).json()["id"], a.post(SD1, json=short).json()["id"]]
        for generation_id in first:
            wait_for(a, generation_id, running_at_step(1))
        # (Its third job has other steps: it can't join a batch with the light one's.)
        backlog = a.post(SD1, json=t2i_body(steps=29)).json()["id"]
        # Then the light organization asks once: its first job goes before the heavy
        # organization's third.
        turn = b.post(SD1, json=short).json()["id"]
        started = wait_for(
            b, turn, lambda r: r.status_code != 202 or r.json()["status"] != "queued"
        )
        assert started.status_code == 200 or started.json()["status"] == "running", started.text
        assert a.get(f"/v1/generation/{backlog}").json()["status"] == "queued"
        for generation_id in [*first, backlog]:
            a.delete(f"/v1/generation/{generation_id}")
        b.delete(f"/v1/generation/{turn}")
        for generation_id in [*first, backlog]:
            wait_for(a, generation_id, finished)
        wait_for(b, turn, finished)
    cluster.deployment.books().assert_settled()


def test_queued_jobs_that_fit_run_as_one_batch_on_a_worker(cluster: Cluster) -> None:
    """A worker takes along the queued jobs that can share its pipeline call (one per
    organization per turn); a cancel from a replica takes one out of the running batch at
    once, refunded, while the others finish with their solo runs' images."""
    holder = cluster.deployment.new_key("scaleout-holder@example.com", 100)
    a_key = cluster.deployment.new_key("scaleout-batch-a@example.com", 100)
    b_key = cluster.deployment.new_key("scaleout-batch-b@example.com", 100)
    body = t2i_body(steps=20)
    with (
        cluster.client(0, holder, **ASYNC) as h,
        cluster.client(0, a_key, **ASYNC) as a,
        cluster.client(1, b_key, **ASYNC) as b,
    ):
        # Both workers busy (SDXL never batches), then three SD 1.x jobs queue up.
        blockers = [h.post(SDXL, json=SLOW).json()["id"] for _ in "12"]
        for generation_id in blockers:
            wait_for(h, generation_id, running_at_step(1))
        requests = {
            "scaleout-batch-a-1": (a, {**body, "seed": 11}),
            "scaleout-batch-b-1": (b, {**body, "seed": 12, "samples": 2}),
            "scaleout-batch-a-2": (a, {**body, "seed": 13}),
        }
        for name, (client, json_body) in requests.items():
            answer = client.post(SD1, json=json_body, headers={"Generation-Id": name})
            assert answer.status_code == 202, answer.text
        h.delete(f"/v1/generation/{blockers[0]}")  # one worker frees; it takes all three
        seen = wait_for(a, "scaleout-batch-a-2", running_at_step(2)).json()
        assert seen["batch_size"] == 3
        left = b.delete("/v1/generation/scaleout-batch-a-2")  # not B's: not found
        assert left.status_code == 404
        left_body = a.delete("/v1/generation/scaleout-batch-a-2").json()
        assert left_body["status"] == "cancelled" and left_body["progress"]["step"] < 20
        h.delete(f"/v1/generation/{blockers[1]}")
        done = {name: wait_for(client, name, finished) for name, (client, _) in requests.items()}
        assert done["scaleout-batch-a-2"].status_code == 409
        for name in ("scaleout-batch-a-1", "scaleout-batch-b-1"):
            client, json_body = requests[name]
            solo = client.post(SD1, json=json_body, headers={"Prefer": "respond-sync"})
            assert_matches_solo(done[name], solo)
    records = generation_records(cluster.deployment, a_key, b_key)
    assert {name: (records[name]["status"], records[name]["batch_size"]) for name in requests} == {
        "scaleout-batch-a-1": ("succeeded", 3),
        "scaleout-batch-b-1": ("succeeded", 3),
        "scaleout-batch-a-2": ("cancelled", 3),
    }
    cluster.deployment.books().assert_settled()
