"""GET /metrics: scraped before and after known traffic, every counter and histogram moves by
exactly what that traffic implies; a worker's own endpoint on the celery backend; prompts in
the access log only when the operator turns them on."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from localstability.app import create_app
from localstability.config import Settings
from tests.conftest import ADMIN_KEY, Cluster, Deployment, start_deployment
from tests.helpers import encode, sample_picture, t2i_body
from tests.test_jobs import balance, client_for, finished, running_at_step, wait_for

SHAPES = "localstability-shapes-v1"
SDXL = "stable-diffusion-xl-1024-v1-0"
SD1 = "stable-diffusion-v1-6"  # loaded on the cluster's workers by the tests before
LATENT = "stable-diffusion-x4-latent-upscaler"
T2I_ROUTE = "/v1/generation/{engine_id}/text-to-image"
UPSCALE_ROUTE = "/v1/generation/{engine_id}/image-to-image/upscale"
ASYNC = {"Prefer": "respond-async"}
SLOW = t2i_body(steps=50, samples=2)  # tiny SDXL at 1024x1024: several seconds

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample of a /metrics answer (no key), by name and labels."""
    answer = httpx.get(url, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def moved(after: Samples, before: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def all_moved(after: Samples, before: Samples, name: str) -> dict[tuple[Any, ...], float]:
    """Each series of `name` that moved, and by how much."""
    return {
        labels: value - before.get((sample, labels), 0.0)
        for (sample, labels), value in after.items()
        if sample == name and value != before.get((sample, labels), 0.0)
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture(scope="module")
def observed(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory, request: Any) -> Deployment:
    """A server of its own (nothing else moves its numbers), prompts in its access log."""
    directory = tmp_path_factory.mktemp("metrics")
    return start_deployment(tiny_dir, directory, "sqlite", request, LOCALSTABILITY_LOG_PROMPTS="1")


def request_lines(deployment: Deployment, generation_id: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:  # the line is written once the answer has gone
        lines = [
            json.loads(line)
            for line in deployment.server.logs().splitlines()
            if line.startswith("{") and '"message": "request"' in line and generation_id in line
        ]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def admin(base_url: str) -> httpx.Client:
    """The admin REST API (quicker than the admin CLI's process)."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    return httpx.Client(base_url=base_url + "/admin/v1", headers=headers, timeout=60)


def new_key(deployment: Deployment, email: str, credits: float) -> tuple[str, str]:
    """A new user's key and organization."""
    with admin(deployment.server.base_url) as client:
        made = client.post("/keys", json={"email": email, "credits": credits})
    assert made.status_code == 201, made.text
    return made.json()["key"], made.json()["organization_id"]


def moved_credits(deployment: Deployment, org: str) -> tuple[float, float]:
    """The organization's charges and refunds, from its ledger."""
    with admin(deployment.server.base_url) as client:
        book = client.get(f"/organizations/{org}/ledger", params={"limit": 1000}).json()
    charged = sum(e["credits"] for e in book["entries"] if e["kind"] == "charge")
    refunded = sum(e["credits"] for e in book["entries"] if e["kind"] == "refund")
    return charged, refunded


def test_each_counter_and_histogram_moves_by_what_the_traffic_implies(
    observed: Deployment,
) -> None:
    url = observed.server.base_url + "/metrics"
    key, org = new_key(observed, "metrics@example.com", 50.0)
    prompt = "a red square on a blue field"
    before = scrape(url)
    with client_for(observed, key) as client:
        made = client.post(
            f"/v1/generation/{SHAPES}/text-to-image",
            json=t2i_body(samples=2, text_prompts=[{"text": prompt, "weight": 0.5}]),
        )
        assert made.status_code == 200, made.text
        refused = client.post(f"/v1/generation/{SHAPES}/text-to-image", json=t2i_body(width=100))
        assert refused.status_code == 400
        failed = client.post(  # its weights are missing: reserved, then refunded
            f"/v1/generation/{LATENT}/image-to-image/upscale",
            files={"image": ("in.png", encode(sample_picture(128, 128)), "image/png")},
            data={"width": "512", "steps": "10"},
        )
        assert failed.status_code == 503 and failed.json()["name"] == "engine_unavailable"
    stranger = httpx.get(
        observed.server.base_url + "/v1/user/balance", headers={"Authorization": "Bearer nope"}
    )
    assert stranger.status_code == 401
    after = scrape(url)

    requests = "localstability_http_requests_total"
    assert all_moved(after, before, requests) == {
        (("method", "GET"), ("route", "/metrics"), ("status", "200")): 1,  # the first scrape
        (("method", "POST"), ("route", T2I_ROUTE), ("status", "200")): 1,
        (("method", "POST"), ("route", T2I_ROUTE), ("status", "400")): 1,
        (("method", "POST"), ("route", UPSCALE_ROUTE), ("status", "503")): 1,
        (("method", "GET"), ("route", "/v1/user/balance"), ("status", "401")): 1,
    }
    assert all_moved(after, before, "localstability_http_errors_total") == {
        (("name", refused.json()["name"]),): 1,
        (("name", "engine_unavailable"),): 1,
        (("name", "unauthorized"),): 1,
    }
    t2i = {"engine": SHAPES, "task": "text-to-image"}
    assert all_moved(after, before, "localstability_images_generated_total") == {
        (("engine", SHAPES), ("task", "text-to-image")): 2
    }
    for histogram in ("localstability_queue_wait_seconds", "localstability_inference_seconds"):
        counts = all_moved(after, before, f"{histogram}_count")
        assert counts == {(("engine", SHAPES), ("task", "text-to-image")): 1}, histogram
        assert moved(after, before, f"{histogram}_bucket", **t2i, le="+Inf") == 1
    # The same pipeline call that the access log timed.
    [line] = request_lines(observed, made.headers["Generation-Id"])
    inference = moved(after, before, "localstability_inference_seconds_sum", **t2i)
    assert inference * 1000 == pytest.approx(line["inference_ms"], abs=0.1)
    assert line["prompts"] == [{"text": prompt, "weight": 0.5}]  # log_prompts is on here
    assert key not in observed.server.logs()
    # The shapes engine was loaded for this traffic; the upscaler's load failed (not counted).
    assert all_moved(after, before, "localstability_model_load_seconds_count") == {
        (("engine", SHAPES),): 1
    }
    charged, refunded = moved_credits(observed, org)
    assert charged > 0 and refunded > 0
    assert moved(after, before, "localstability_credits_charged_total") == pytest.approx(charged)
    assert moved(after, before, "localstability_credits_refunded_total") == pytest.approx(refunded)
    assert value(after, "process_resident_memory_bytes") > 50e6  # torch is in there


def test_queue_gauges_count_waiting_and_running_generations_per_engine(
    observed: Deployment,
) -> None:
    url = observed.server.base_url + "/metrics"
    key, org = new_key(observed, "gauges@example.com", 50.0)
    idle = scrape(url)
    assert value(idle, "localstability_jobs_running", engine=SDXL) == 0
    with client_for(observed, key, **ASYNC) as client:
        running = client.post(f"/v1/generation/{SDXL}/text-to-image", json=SLOW).json()["id"]
        queued = client.post(f"/v1/generation/{SDXL}/text-to-image", json=SLOW).json()["id"]
        wait_for(client, running, running_at_step(1))
        busy = scrape(url)
        for generation_id in (queued, running):
            assert client.delete(f"/v1/generation/{generation_id}").status_code in (200, 204)
        for generation_id in (queued, running):
            wait_for(client, generation_id, finished)
        assert balance(client) == pytest.approx(50.0)
    after = scrape(url)
    gauges = ("localstability_jobs_queued", "localstability_jobs_running")
    assert [value(busy, gauge, engine=SDXL) for gauge in gauges] == [1, 1]
    assert [value(after, gauge, engine=SDXL) for gauge in gauges] == [0, 0]
    engines = {dict(labels)["engine"] for (name, labels) in busy if name == gauges[0]}
    assert {SHAPES, SDXL, LATENT} <= engines  # every enabled engine, waiting or not
    assert sum(v for (name, _), v in busy.items() if name in gauges) == 2
    refunded = moved(after, idle, "localstability_credits_refunded_total")
    assert refunded == pytest.approx(moved_credits(observed, org)[1])
    assert moved(after, idle, "localstability_images_generated_total", engine=SDXL) == 0


def test_a_worker_serves_the_numbers_of_the_jobs_it_ran(cluster: Cluster) -> None:
    """On the celery backend a job runs on a worker: its queue wait, inference time, images
    and charge are counted there, on the worker's own endpoint; the replica that answered
    counts the request, not the other one."""
    workers = [worker.metrics_url for worker in cluster.workers]
    before = [scrape(url) for url in workers]
    replica_b = cluster.replicas[1].base_url + "/metrics"
    b_before = scrape(replica_b)
    with cluster.client(0) as a:
        made = a.post(f"/v1/generation/{SD1}/text-to-image", json=t2i_body(samples=3))
        assert made.status_code == 200, made.text
        org = a.get("/v1/user/account").json()["organizations"][0]["id"]
    with admin(cluster.replicas[0].base_url) as client:
        records = client.get(f"/organizations/{org}/generations", params={"limit": 100}).json()
    [record] = [r for r in records if r["id"] == made.headers["Generation-Id"]]
    after = [scrape(url) for url in workers]
    b_after = scrape(replica_b)
    t2i = {"engine": SD1, "task": "text-to-image"}

    def total(name: str, **labels: str) -> float:
        return sum(moved(new, old, name, **labels) for new, old in zip(after, before, strict=True))

    assert total("localstability_images_generated_total", **t2i) == 3
    assert total("localstability_queue_wait_seconds_count", **t2i) == 1
    assert total("localstability_inference_seconds_count", **t2i) == 1
    assert total("localstability_credits_charged_total") == pytest.approx(record["credits"])
    # The worker serves no requests: those are the replicas' (A answered this one, not B).
    assert not any(name.startswith("localstability_http") for s in after for name, _ in s)
    route = {"method": "POST", "route": T2I_ROUTE, "status": "200"}
    assert moved(b_after, b_before, "localstability_http_requests_total", **route) == 0
    assert value(b_after, "localstability_jobs_queued", engine=SD1) == 0
    assert all(value(s, "process_resident_memory_bytes") > 0 for s in after)


def test_metrics_can_be_switched_off(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", offline=True, log_json=False, metrics=False)
    app_client = TestClient(create_app(settings))  # no lifespan: nothing runs in it
    off = app_client.get("/metrics")
    assert off.status_code == 404 and off.json()["name"] == "not_found"
    assert "metrics = false" in off.json()["message"]
    assert "/metrics" not in app_client.get("/openapi.json").json()["paths"]
