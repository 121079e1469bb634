"""The celery backend against the embedded server, in one command, on the tiny models:

- throughput: the same burst of concurrent text-to-image requests through an API replica
  with one worker, then with two (each worker's torch on one thread, as on a 2-core box with
  one worker per core), in images per second; the ratio two / one (batching off, so that
  the ratio is the workers' alone);
- batching on a worker: the same burst on one worker through a replica with batching on
  (queued jobs that fit run as one pipeline call), against the burst with batching off;
- latency: sequential sync requests through a replica with one warm worker vs through the
  embedded server (`backend = local`, torch on one thread too): the p50 of each and the p50
  that the celery path adds;
- recovery: a worker SIGKILLed at step 2 of a job while another worker is idle and warm: the
  seconds from the kill to the job's images (its next delivery and a run from the start);
- the API replica's start (launch to its first 200 on GET /v1/engines/list) and its RSS, vs
  the embedded server's start and RSS after its first image.

Redis and PostgreSQL are started here on loopback ports and stopped by PID.

    .venv/bin/python -m bench.scaleout [--requests 12] [--steps 10] [--latency-requests 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench import TINY_MODELS, machine, write_results

ENGINE = "stable-diffusion-v1-6"
SLOW_ENGINE = "stable-diffusion-xl-1024-v1-0"
PROMPT = "a lighthouse on a cliff at dusk"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ADMIN_KEY = "bench-admin-key-5c0e7a19d2b84f36"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def body(steps: int, seed: int) -> dict[str, Any]:
    return {
        "text_prompts": [{"text": PROMPT}],
        "steps": steps,
        "seed": seed,
        "width": 512,
        "height": 512,
    }


def batch_sizes(worker_log: Path) -> list[int]:
    """The size of each batch (of more than one job) that the worker's log tells of."""
    sizes = []
    for line in worker_log.read_text().splitlines():
        if line.startswith("{") and '"message": "batch"' in line:
            sizes.append(len(json.loads(line).get("generations", [])))
    return sizes


def burst(base_url: str, key: str, requests: int, steps: int) -> float:
    """Images per second for `requests` concurrent sync requests."""

    def one(seed: int) -> None:
        response = httpx.post(
            f"{base_url}/v1/generation/{ENGINE}/text-to-image",
            json=body(steps, seed),
            headers={"Authorization": f"Bearer {key}"},
            timeout=600,
        )
        response.raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(requests) as pool:
        list(pool.map(one, range(1, requests + 1)))
    return requests / (time.perf_counter() - started)


def sequential_ms(base_url: str, key: str, count: int, steps: int) -> list[float]:
    times = []
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=600) as client:
        for seed in range(1, count + 1):
            started = time.perf_counter()
            response = client.post(
                f"{base_url}/v1/generation/{ENGINE}/text-to-image", json=body(steps, seed)
            )
            response.raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
    return times


def recovery_s(base_url: str, key: str, kill: Any) -> float:
    """Kill the worker that runs a slow job at its step 2; seconds until its images come."""
    headers = {"Authorization": f"Bearer {key}", "Prefer": "respond-async"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=600) as client:
        accepted = client.post(
            f"/v1/generation/{SLOW_ENGINE}/text-to-image",
            json={"text_prompts": [{"text": PROMPT}], "steps": 30},
        )
        generation_id = accepted.json()["id"]
        while True:
            status = client.get(f"/v1/generation/{generation_id}").json()
            if status.get("status") == "running" and status["progress"]["step"] >= 2:
                break
            time.sleep(0.05)
        killed = kill(generation_id)
        while True:
            response = client.get(f"/v1/generation/{generation_id}")
            if response.status_code != 202:
                break
            time.sleep(0.2)
        if response.status_code != 200:
            raise RuntimeError(f"the job did not finish elsewhere: {response.text}")
        return time.monotonic() - killed


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from localstability.testing import (
        run_cli,
        start_postgres,
        start_redis,
        start_server,
        start_worker,
    )

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--latency-requests", type=int, default=8)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as scratch:
        root = Path(scratch)
        print("building tiny models...", flush=True)
        run_cli("models", "make-tiny", str(root / "tiny"))
        config = root / "tiny" / "localstability.toml"
        redis, postgres = start_redis(), start_postgres()
        processes: list[Any] = []
        try:
            common = {
                **ONE_THREAD,
                "LOCALSTABILITY_RATE_LIMIT_REQUESTS": "0",
                "LOCALSTABILITY_BATCHING": "0",
            }
            celery = {
                **common,
                "LOCALSTABILITY_DATA_DIR": str(root / "celery-data"),
                "LOCALSTABILITY_DATABASE_URL": postgres.create_database("bench"),
                "LOCALSTABILITY_BACKEND": "celery",
                "LOCALSTABILITY_REDIS_URL": redis.url,
                "LOCALSTABILITY_REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:6]}:",
                "LOCALSTABILITY_RUNNER_HEARTBEAT_S": "1",
                "LOCALSTABILITY_RUNNER_TIMEOUT_S": "4",
                "LOCALSTABILITY_ADMIN_KEY": ADMIN_KEY,
            }
            print("API replica (celery backend)...", flush=True)
            started = time.monotonic()
            replica = start_server(config, root / "replica.log", env=celery)
            replica_start_s = time.monotonic() - started
            processes.append(replica)

            def add_worker(name: str) -> Any:
                worker = start_worker(config, root / f"{name}.log", celery)
                processes.append(worker)
                return worker

            first = add_worker("worker-1")
            burst(replica.base_url, replica.key, 1, args.steps)  # loads the model
            print("one worker...", flush=True)
            one = burst(replica.base_url, replica.key, args.requests, args.steps)
            print("one worker, batching on...", flush=True)
            on = {**celery, "LOCALSTABILITY_BATCHING": "1"}
            batching = start_server(config, root / "replica-batching.log", env=on)
            processes.append(batching)
            before = batch_sizes(root / "worker-1.log")
            batched = burst(batching.base_url, replica.key, args.requests, args.steps)
            sizes = batch_sizes(root / "worker-1.log")[len(before) :]
            batching.stop()
            processes.remove(batching)
            second = add_worker("worker-2")
            burst(replica.base_url, replica.key, 2, args.steps)  # both warm
            print("two workers...", flush=True)
            two = burst(replica.base_url, replica.key, args.requests, args.steps)
            second.stop()
            processes.remove(second)
            print("latency, celery path...", flush=True)
            celery_ms = sequential_ms(
                replica.base_url, replica.key, args.latency_requests, args.steps
            )
            replica_rss = rss_mib(replica.process.pid)

            print("recovery after a worker's death...", flush=True)
            spare = add_worker("worker-3")
            burst(replica.base_url, replica.key, 2, 10)  # both hold SD1; SDXL loads on use

            def kill(generation_id: str) -> float:
                # The worker that runs it: the cluster view names its job.
                info = httpx.get(
                    f"{replica.base_url}/admin/v1/cluster",
                    headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                    timeout=30,
                ).json()
                pid = next(w["pid"] for w in info["workers"] if generation_id in w["running"])
                victim = first if first.process.pid == pid else spare
                victim.kill()
                return time.monotonic()

            recovery = recovery_s(replica.base_url, replica.key, kill)

            for process in reversed(processes):
                process.stop()
            processes.clear()

            print("embedded server...", flush=True)
            local = {**common, "LOCALSTABILITY_DATA_DIR": str(root / "local-data")}
            started = time.monotonic()
            embedded = start_server(config, root / "embedded.log", env=local)
            embedded_start_s = time.monotonic() - started
            processes.append(embedded)
            burst(embedded.base_url, embedded.key, 1, args.steps)
            embedded_ms = sequential_ms(
                embedded.base_url, embedded.key, args.latency_requests, args.steps
            )
            embedded_rss = rss_mib(embedded.process.pid)
        finally:
            for process in reversed(processes):
                process.stop()
            redis.stop()
            postgres.stop()

    p50_celery, p50_embedded = statistics.median(celery_ms), statistics.median(embedded_ms)
    payload = {
        "benchmark": "scaleout: the celery backend (API replica + workers) vs the embedded server",
        "models": TINY_MODELS,
        "machine": machine(),
        "engine_id": ENGINE,
        "size": "512x512",
        "steps": args.steps,
        "torch_threads_per_process": 1,
        "throughput": {
            "requests": args.requests,
            "one_worker_images_per_s": round(one, 3),
            "two_workers_images_per_s": round(two, 3),
            "ratio": round(two / one, 3),
            "batching": "off",
        },
        "worker_batching": {
            "requests": args.requests,
            "one_worker_images_per_s": round(one, 3),
            "one_worker_batched_images_per_s": round(batched, 3),
            "ratio": round(batched / one, 3),
            "batch_sizes": sizes,
        },
        "latency": {
            "requests": args.latency_requests,
            "celery_p50_ms": round(p50_celery, 1),
            "embedded_p50_ms": round(p50_embedded, 1),
            "added_p50_ms": round(p50_celery - p50_embedded, 1),
        },
        "recovery": {
            "engine_id": SLOW_ENGINE,
            "kill_to_images_s": round(recovery, 2),
            "settings": {"runner_timeout_s": 4, "runner_heartbeat_s": 1},
        },
        "replica": {
            "start_s": round(replica_start_s, 2),
            "rss_mib": replica_rss,
            "embedded_start_s": round(embedded_start_s, 2),
            "embedded_rss_mib_after_first_image": embedded_rss,
        },
    }
    print(payload)
    write_results("scaleout", payload)
    return payload


if __name__ == "__main__":
    main()
