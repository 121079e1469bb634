"""Batching through HTTP: queued requests that fit together run as one pipeline call, each
with its own prompts and seeds, and give the images of their solo runs.

"Equal to the solo run" here means: the same seeds and finish reasons, and pixels that differ
by at most 1/255 on under 1 % of the pixels (measured: up to 0.15 %). Float arithmetic at
another batch size rounds differently (measured on CPU: small matrix products and some
convolutions), so bit-identical is not to be had from batching; `batching = false` gives
bit-exact reruns (docs/api.md)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import Deployment, start_deployment
from tests.helpers import artifact_image, encode, pixels, sample_picture, t2i_body
from tests.test_accounts_engines import assert_envelope
from tests.test_jobs import (
    ASYNC,
    SDXL,
    SLOW,
    balance,
    client_for,
    finished,
    running_at_step,
    wait_for,
)

SD1 = "/v1/generation/stable-diffusion-v1-6"
T2I = f"{SD1}/text-to-image"


@pytest.fixture(scope="module")
def batching(sqlite_deployment: Deployment) -> Deployment:
    """The session's billed SQLite deployment (the same settings a server of this module's own
    had; batching is on by default)."""
    return sqlite_deployment


def assert_matches_solo(batched: httpx.Response, solo: httpx.Response) -> None:
    assert batched.status_code == solo.status_code == 200, (batched.text, solo.text)
    got, want = batched.json()["artifacts"], solo.json()["artifacts"]
    assert [(a["seed"], a["finishReason"]) for a in got] == [
        (a["seed"], a["finishReason"]) for a in want
    ]
    for a, b in zip(got, want, strict=True):
        difference = np.abs(pixels(artifact_image(a)) - pixels(artifact_image(b)))
        assert difference.max() <= 1
        assert (difference > 0).any(axis=-1).mean() < 0.01


def hold_the_device(client: httpx.Client) -> str:
    """A slow SDXL generation (never batched): what is posted meanwhile queues up."""
    blocker: str = client.post(SDXL, json=SLOW, headers=ASYNC).json()["id"]
    wait_for(client, blocker, lambda r: r.json().get("status") == "running")
    return blocker


def post_async(client: httpx.Client, path: str, name: str, **request: Any) -> str:
    headers = {**ASYNC, "Generation-Id": name}
    response = client.post(path, headers=headers, **request)
    assert response.status_code == 202, response.text
    return name


def multipart(prompt: str, seed: int, picture: int, **fields: Any) -> dict[str, Any]:
    data = {"text_prompts[0][text]": prompt, "steps": 10, "seed": seed, **fields}
    image = sample_picture(320, 384).rotate(90 * picture)
    files = {"init_image": ("init.png", encode(image), "image/png")}
    if "mask_source" in fields:
        mask = np.zeros((384, 320), np.uint8)
        mask[96 * picture : 96 * picture + 192, 64:256] = 255
        files["mask_image"] = ("mask.png", encode(_grey(mask)), "image/png")
    return {"data": {k: str(v) for k, v in data.items()}, "files": files}


def _grey(array: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(array, "L")


def test_queued_requests_that_fit_run_as_one_batch_and_match_their_solo_runs(
    batching: Deployment,
) -> None:
    a_key = batching.new_key("batch-a@example.com", credits=50.0)
    b_key = batching.new_key("batch-b@example.com", credits=50.0)
    fox = [{"text": "a red fox in the snow", "weight": 1}, {"text": "blurry", "weight": -1}]
    requests = {
        "batch-a-1": (a_key, t2i_body(seed=11)),
        "batch-b-1": (b_key, t2i_body(seed=12, samples=2, text_prompts=fox)),
        "batch-a-2": (a_key, t2i_body(seed=13, steps=12)),  # other steps: another batch
        "batch-a-3": (a_key, t2i_body(seed=14, style_preset="anime")),
        "batch-b-2": (b_key, t2i_body(seed=15)),  # the first batch is full (4 images)
    }
    with client_for(batching, a_key) as a, client_for(batching, b_key) as b:
        clients = {a_key: a, b_key: b}
        blocker = hold_the_device(a)
        for name, (key, body) in requests.items():
            post_async(clients[key], T2I, name, json=body)
        a.delete(f"/v1/generation/{blocker}")
        done = {name: wait_for(clients[key], name, finished) for name, (key, _) in requests.items()}
        for name, (key, body) in requests.items():
            alone = clients[key].post(T2I, json=body)  # nothing queued now: a solo run
            assert_matches_solo(done[name], alone)
        a_balance, b_balance = balance(a), balance(b)
    records = generation_records(batching, a_key, b_key)
    # One request per organization per turn while the batch had room: a-1, b-1, a-3.
    assert {name: records[name]["batch_size"] for name in requests} == {
        "batch-a-1": 3,
        "batch-b-1": 3,
        "batch-a-3": 3,
        "batch-b-2": 1,
        "batch-a-2": 1,
    }
    assert all(records[name]["status"] == "succeeded" for name in requests)
    # Each paid its own price, batched or not (the solo reruns included), once.
    for key, left in ((a_key, a_balance), (b_key, b_balance)):
        paid = [r for r in generation_records(batching, key).values() if r["status"] == "succeeded"]
        assert len(paid) == (6 if key == a_key else 4)
        assert left == pytest.approx(50.0 - sum(r["credits"] for r in paid), abs=1e-6)


def generation_records(deployment: Deployment, *keys: str) -> dict[str, dict[str, Any]]:
    return {
        record["id"]: record
        for key in keys
        for record in deployment.admin_json("ledger", "generations", "--org", _org(deployment, key))
    }


def _org(deployment: Deployment, key: str) -> str:
    with client_for(deployment, key) as client:
        org: str = client.get("/v1/user/account").json()["organizations"][0]["id"]
    return org


def test_image_to_image_and_masking_batch_with_their_own_images(batching: Deployment) -> None:
    key = batching.new_key("batch-images@example.com", credits=50.0)
    masking = {"mask_source": "MASK_IMAGE_WHITE"}
    requests = {
        "batch-i2i-1": ("image-to-image", multipart("a garden", 21, 0, image_strength=0.4)),
        "batch-i2i-2": ("image-to-image", multipart("a harbour", 22, 1, image_strength=0.4)),
        "batch-mask-1": ("image-to-image/masking", multipart("a cat", 23, 0, **masking)),
        "batch-mask-2": ("image-to-image/masking", multipart("a dog", 24, 1, **masking)),
    }
    with client_for(batching, key) as client:
        blocker = hold_the_device(client)
        for name, (task, request) in requests.items():
            post_async(client, f"{SD1}/{task}", name, **request)
        client.delete(f"/v1/generation/{blocker}")
        done = {name: wait_for(client, name, finished) for name in requests}
        for name, (task, request) in requests.items():
            assert_matches_solo(done[name], client.post(f"{SD1}/{task}", **request))
    records = generation_records(batching, key)
    assert {name: records[name]["batch_size"] for name in requests} == dict.fromkeys(requests, 2)


def test_cancelling_in_a_batch(batching: Deployment) -> None:
    """One cancelled generation leaves its batch at once (refunded); the others finish. When
    every one of a batch is cancelled, the run stops within a step."""
    key = batching.new_key("batch-cancel@example.com", credits=50.0)
    long = t2i_body(steps=40)
    with client_for(batching, key) as client:
        blocker = hold_the_device(client)
        for name in ("batch-stay-1", "batch-leave-1", "batch-stay-2"):
            post_async(client, T2I, name, json={**long, "seed": len(name)})
        client.delete(f"/v1/generation/{blocker}")
        seen = wait_for(client, "batch-leave-1", running_at_step(2)).json()
        assert seen["batch_size"] == 3
        left = client.delete("/v1/generation/batch-leave-1").json()
        assert left["status"] == "cancelled" and left["progress"]["step"] < 40
        for name in ("batch-stay-1", "batch-stay-2"):
            assert wait_for(client, name, finished).status_code == 200
        assert_envelope(client.get("/v1/generation/batch-leave-1"), 409, "generation_cancelled")

        blocker = hold_the_device(client)
        for name in ("batch-gone-1", "batch-gone-2"):
            post_async(client, T2I, name, json={**long, "seed": len(name)})
        client.delete(f"/v1/generation/{blocker}")
        wait_for(client, "batch-gone-1", running_at_step(2))
        for name in ("batch-gone-1", "batch-gone-2"):
            step = client.delete(f"/v1/generation/{name}").json()["progress"]["step"]
            assert step < 40
        final = [wait_for(client, n, finished) for n in ("batch-gone-1", "batch-gone-2")]
        assert all(r.status_code == 409 for r in final)
        left_balance = balance(client)
    records = generation_records(batching, key)
    assert {
        n: records[n]["status"]
        for n in ("batch-stay-1", "batch-leave-1", "batch-stay-2", "batch-gone-1", "batch-gone-2")
    } == {
        "batch-stay-1": "succeeded",
        "batch-leave-1": "cancelled",
        "batch-stay-2": "succeeded",
        "batch-gone-1": "cancelled",
        "batch-gone-2": "cancelled",
    }
    charged = records["batch-stay-1"]["credits"] + records["batch-stay-2"]["credits"]
    assert left_balance == pytest.approx(50.0 - charged, abs=1e-6)


def test_a_batch_window_gathers_requests_that_arrive_close_together(
    tiny_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """With batch_window_ms, a batch with room waits for more; engines whose
    batch_max_images is 1 (SDXL here) never batch."""
    deployment = start_deployment(
        tiny_dir, tmp_path, "sqlite", request, LOCALSTABILITY_BATCH_WINDOW_MS="1500"
    )
    key = deployment.new_key("window@example.com", credits=50.0)
    answers: dict[str, httpx.Response] = {}

    def post(name: str, path: str, body: dict[str, Any]) -> None:
        with client_for(deployment, key, **{"Generation-Id": name}) as client:
            answers[name] = client.post(path, json=body)

    threads = []
    for name, path, body in (
        ("window-1", T2I, t2i_body(seed=1)),
        ("window-2", T2I, t2i_body(seed=2)),
        ("window-xl-1", SDXL, t2i_body(seed=3, width=1024, height=1024)),
        ("window-xl-2", SDXL, t2i_body(seed=4, width=1024, height=1024)),
    ):
        threads.append(threading.Thread(target=post, args=(name, path, body)))
        threads[-1].start()
        time.sleep(0.3)
    for thread in threads:
        thread.join(120)
    assert all(a.status_code == 200 for a in answers.values()), [a.text for a in answers.values()]
    records = generation_records(deployment, key)
    assert {n: records[n]["batch_size"] for n in answers} == {
        "window-1": 2,
        "window-2": 2,
        "window-xl-1": 1,
        "window-xl-2": 1,
    }
