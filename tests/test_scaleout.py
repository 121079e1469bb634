"""The celery backend through HTTP: real Redis and PostgreSQL (started by the tests on
loopback ports, stopped by PID), two API replicas and two workers on the tiny models.
A generation asked of one replica is answered, watched and cancelled through the other; a
worker killed mid-job leaves the job ended once (re-run elsewhere, or refunded) and every
ledger adding up."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from localstability.testing import (
    PostgresServer,
    RedisServer,
    ServerProcess,
    WorkerProcess,
    start_redis,
    start_server,
    start_worker,
)
from tests.conftest import ADMIN_KEY, Deployment
from tests.helpers import t2i_body

SD1 = "/v1/generation/stable-diffusion-v1-6/text-to-image"
SDXL = "/v1/generation/stable-diffusion-xl-1024-v1-0/text-to-image"
ASYNC = {"Prefer": "respond-async"}
SLOW = t2i_body(steps=50, samples=2)  # tiny SDXL at 1024x1024: several seconds


@dataclass
class Cluster:
    replicas: list[ServerProcess]
    workers: list[WorkerProcess]
    deployment: Deployment  # replica 0's, for the admin CLI and the books
    config: Path
    env: dict[str, str]
    directory: Path

    def client(self, replica: int, key: str | None = None, **headers: str) -> httpx.Client:
        server = self.replicas[replica]
        return httpx.Client(
            base_url=server.base_url,
            headers={"Authorization": f"Bearer {key or server.key}", **headers},
            timeout=300,
        )

    def add_worker(self, name: str) -> WorkerProcess:
        worker = start_worker(self.config, self.directory / f"{name}.log", self.env)
        self.workers.append(worker)
        return worker


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(
    tiny_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    postgres: PostgresServer,
    redis_server: RedisServer,
) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("scaleout")
    config = directory / "localstability.toml"
    config.write_text((tiny_dir / "localstability.toml").read_text())
    env = {
        "LOCALSTABILITY_DATA_DIR": str(directory / "data"),
        "LOCALSTABILITY_ADMIN_KEY": ADMIN_KEY,
        "LOCALSTABILITY_DATABASE_URL": postgres.create_database("scaleout"),
        "LOCALSTABILITY_BACKEND": "celery",
        "LOCALSTABILITY_REDIS_URL": redis_server.url,
        "LOCALSTABILITY_REDIS_PREFIX": f"test-{uuid.uuid4().hex[:8]}:",
        "LOCALSTABILITY_RUNNER_HEARTBEAT_S": "1",
        "LOCALSTABILITY_RUNNER_TIMEOUT_S": "4",
        "LOCALSTABILITY_MAX_JOBS_PER_ORGANIZATION": "3",
    }
    replicas: list[ServerProcess] = []
    workers: list[WorkerProcess] = []
    try:
        replicas.append(start_server(config, directory / "replica-a.log", env=env))
        replicas.append(start_server(config, directory / "replica-b.log", env=env))
        workers.append(start_worker(config, directory / "worker-1.log", env))
        workers.append(start_worker(config, directory / "worker-2.log", env))
        deployment = Deployment(replicas[0], env, config)
        yield Cluster(replicas, workers, deployment, config, env, directory)
    finally:
        for worker in workers:
            worker.stop()
        for replica in replicas:
            replica.stop()


def wait_for(
    client: httpx.Client, generation_id: str, done: Callable[[httpx.Response], bool]
) -> httpx.Response:
    deadline = time.monotonic() + 180
    while True:
        response = client.get(f"/v1/generation/{generation_id}")
        if done(response):
            return response
        assert time.monotonic() < deadline, response.text
        time.sleep(0.2)


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


def test_a_queued_job_cancelled_never_runs(cluster: Cluster) -> None:
    with cluster.client(0, **ASYNC) as a, cluster.client(1) as b:
        before = balance(a)
        # Both workers busy, then one more: it waits in the queue.
        busy = [a.post(SDXL, json=SLOW).json()["id"] for _ in range(2)]
        queued = b.post(SDXL, json=SLOW, headers=ASYNC)
        assert queued.status_code == 202
        generation_id = queued.json()["id"]
        assert b.get(f"/v1/generation/{generation_id}").json()["status"] == "queued"
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


def test_an_api_replica_never_loads_torch(cluster: Cluster) -> None:
    # After every test above (sync, async, SSE, cancel, MCP went through the replicas).
    for replica in cluster.replicas:
        maps = Path(f"/proc/{replica.process.pid}/maps").read_text()
        assert "libtorch" not in maps and "diffusers" not in maps
    for worker in cluster.workers:
        assert "libtorch" in Path(f"/proc/{worker.process.pid}/maps").read_text()
