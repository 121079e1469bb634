"""Load and fault: many clients mixing every endpoint for a fixed time, then a crash mid-run.

Each client (a thread with its own connection) loops over a seeded random mix until the time is
up: the engine list, account and balance; text-to-image on SD 1.x and SDXL (JSON or PNG, one or
two samples), image-to-image, masking and upscale, async generations that are polled to the end
and sometimes cancelled, clients that hang up mid-generation, and bad requests. Every generation
carries a client-chosen Generation-Id, so each request can be found in the database afterwards.
An attacker's mix comes along: requests past the bounds (too many prompts, a prompt too long,
a body over the JSON limit) and connections that send half a request head and hold it.

Then:
* every request got an HTTP answer it may get (no 5xx, no transport error) except the hang-ups;
  the server closed every half-sent connection itself (after its header timeout);
* the books settle: every ledger adds up and holds nothing back, no generation record is left
  queued or running, each generation reserved its cost once and was then charged it (succeeded)
  or refunded it, once; every image a client received is a succeeded record, and every
  succeeded record is an image a client received or one whose client hung up;
* the same load again, and the server is killed (SIGKILL) while generations run: after a
  restart nothing is lost (every id a client was answered for has its record; what ran or
  waited at the kill is refunded and answers `500 generation_interrupted`) and the server
  serves again. Inference runs inside the server process, so killing it kills the worker.

Bounded in count and time, loopback only. The level (`LOCALSTABILITY_LOAD`):

    ci     (default) 6 clients for 14 s, then the crash round; about 1-1.5 min
    heavy  16 clients for 120 s, on SQLite and on PostgreSQL
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Books, Deployment, assert_no_server_errors, start_deployment
from tests.helpers import encode, sample_picture, t2i_body
from tests.test_accounts_engines import assert_envelope
from tests.test_masking import half_mask

LEVELS = {"ci": (6, 14.0, ["sqlite"]), "heavy": (16, 120.0, ["sqlite", "postgresql"])}
LEVEL = os.environ.get("LOCALSTABILITY_LOAD", "ci")
if LEVEL not in LEVELS:
    raise ValueError(f"LOCALSTABILITY_LOAD must be one of {sorted(LEVELS)}, not {LEVEL!r}")
CLIENTS, SECONDS, DATABASES = LEVELS[LEVEL]

SD1 = "stable-diffusion-v1-6"
SDXL_BETA = "stable-diffusion-xl-beta-v2-2-2"
ESRGAN = "esrgan-v1-x2plus"
# What each kind of request may be answered, besides 429 (rate limits and the per-organization
# job cap) which any may get. 402: the poor organization runs out of credits; 503: queue full.
GENERATION_OK = {200, 402, 503}
ALLOWED = {
    "read": {200},
    "t2i": GENERATION_OK,
    "t2i-png": GENERATION_OK,
    "i2i": GENERATION_OK,
    "masking": GENERATION_OK,
    "upscale": GENERATION_OK,
    "async": {202, 402, 503},
    "poll": {200, 202, 409},
    "cancel": {200},
    "bad": {400},
    "oversized": {400},
}
# The deployment's header timeout (short, so that half-sent heads are cut off within a round).
HEADER_TIMEOUT_S = 2.0
HALF_SENT = b"POST /v1/generation/stable-diffusion-v1-6/text-to-image HTTP/1.1\r\nHost: x\r\nConte"
GENERATING = {"t2i", "t2i-png", "i2i", "masking", "upscale"}
TIMEOUT = httpx.Timeout(180.0, connect=10.0)
HANG_UP_AFTER_S = 0.5


def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    return encode(sample_picture(*size, mode=mode))


INIT = png((320, 320))
MASK = encode(half_mask(width=320, height=320))
SMALL = png((64, 64))


@dataclass
class Outcome:
    kind: str
    status: int | None  # None: no HTTP answer
    generation_id: str | None = None
    error: str | None = None
    at: float = field(default_factory=time.monotonic)


class LoadClient:
    """One client: its own connection, key and seeded mix of requests."""

    def __init__(self, base_url: str, key: str, seed: int, outcomes: list[Outcome]) -> None:
        self.rng = random.Random(seed)
        self.http = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=TIMEOUT
        )
        self.base_url, self.key = base_url, key
        self.outcomes = outcomes
        self.hung_up: list[str] = []
        self.half_sent: list[socket.socket] = []
        self.mix: list[tuple[Callable[[], None], int]] = [
            (self.read, 4),
            (self.t2i, 3),
            (self.t2i_png, 1),
            (self.i2i, 2),
            (self.masking, 1),
            (self.upscale, 2),
            (self.run_async, 2),
            (self.hang_up, 1),
            (self.bad, 1),
            (self.attack, 1),
        ]

    def run(self, until: float, first: int) -> None:
        """Two requests of kinds `first` and `first + 1` of the mix (so that however slow the
        machine, the clients together make every kind), then a weighted random mix."""
        actions, weights = zip(*self.mix, strict=True)
        try:
            for k in (first, first + 1):
                actions[k % len(actions)]()
            while time.monotonic() < until:
                self.rng.choices(actions, weights)[0]()
        finally:
            self.http.close()

    # ---- requests --------------------------------------------------------------------

    def send(
        self, kind: str, method: str, path: str, gid: str | None = None, **kw: Any
    ) -> httpx.Response | None:
        """One request, its outcome recorded; `gid` is sent as the Generation-Id of a POST."""
        headers = kw.pop("headers", {})
        if gid and method == "POST":
            headers = {**headers, "Generation-Id": gid}
        try:
            response = self.http.request(method, path, headers=headers, **kw)
        except httpx.TransportError as exc:
            self.outcomes.append(Outcome(kind, None, gid, f"{type(exc).__name__}: {exc}"))
            time.sleep(0.2)  # the server is down (the crash round): don't spin
            return None
        self.outcomes.append(Outcome(kind, response.status_code, gid))
        if response.status_code in (402, 429):
            time.sleep(0.1)  # refused at once: a real client would not retry in a tight loop
        return response

    def read(self) -> None:
        path = self.rng.choice(["/v1/engines/list", "/v1/user/account", "/v1/user/balance"])
        self.send("read", "GET", path)
        time.sleep(0.02)

    def t2i_body(self, engine: str) -> dict[str, Any]:
        size = 320 if engine == SD1 else 128
        return t2i_body(
            width=size,
            height=size,
            steps=10,
            samples=self.rng.choice([1, 1, 2]),
            seed=self.rng.randrange(1, 2**32),
        )

    def t2i(self) -> None:
        engine = self.rng.choice([SD1, SD1, SDXL_BETA])
        path = f"/v1/generation/{engine}/text-to-image"
        self.send("t2i", "POST", path, new_id(), json=self.t2i_body(engine))

    def t2i_png(self) -> None:
        body = {**self.t2i_body(SD1), "samples": 1}
        self.send(
            "t2i-png",
            "POST",
            f"/v1/generation/{SD1}/text-to-image",
            new_id(),
            json=body,
            headers={"Accept": "image/png"},
        )

    def form(self, **fields: Any) -> dict[str, str]:
        return {
            "text_prompts[0][text]": "a lighthouse",
            "steps": "10",
            "seed": str(self.rng.randrange(1, 2**32)),
            **{k: str(v) for k, v in fields.items()},
        }

    def i2i(self) -> None:
        self.send(
            "i2i",
            "POST",
            f"/v1/generation/{SD1}/image-to-image",
            new_id(),
            data=self.form(image_strength=0.5),
            files={"init_image": ("init.png", INIT, "image/png")},
        )

    def masking(self) -> None:
        self.send(
            "masking",
            "POST",
            f"/v1/generation/{SD1}/image-to-image/masking",
            new_id(),
            data=self.form(mask_source="MASK_IMAGE_WHITE"),
            files={
                "init_image": ("init.png", INIT, "image/png"),
                "mask_image": ("mask.png", MASK, "image/png"),
            },
        )

    def upscale(self) -> None:
        self.send(
            "upscale",
            "POST",
            f"/v1/generation/{ESRGAN}/image-to-image/upscale",
            new_id(),
            files={"image": ("small.png", SMALL, "image/png")},
        )

    def run_async(self) -> None:
        gid = new_id()
        response = self.send(
            "async",
            "POST",
            f"/v1/generation/{SD1}/text-to-image",
            gid,
            json=self.t2i_body(SD1),
            headers={"Prefer": "respond-async"},
        )
        if response is None or response.status_code != 202:
            return
        if self.rng.random() < 0.3:
            time.sleep(self.rng.uniform(0, 1.0))
            self.send("cancel", "DELETE", f"/v1/generation/{gid}", gid)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            polled = self.send("poll", "GET", f"/v1/generation/{gid}", gid)
            if polled is None or polled.status_code != 202:
                return
            time.sleep(0.2)
        self.outcomes.append(Outcome("poll", None, gid, "still running after 180 s"))

    def hang_up(self) -> None:
        """A client that gives up mid-generation (its own timeout): the server must cancel it."""
        gid = new_id()
        body = {**self.t2i_body(SD1), "steps": 50}
        with httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.key}", "Generation-Id": gid},
            timeout=HANG_UP_AFTER_S,
        ) as impatient:
            try:
                response = impatient.post(f"/v1/generation/{SD1}/text-to-image", json=body)
            except httpx.TimeoutException:
                self.hung_up.append(gid)
                return
            except httpx.TransportError as exc:
                self.outcomes.append(Outcome("t2i", None, gid, f"{type(exc).__name__}: {exc}"))
                return
        # Answered within the timeout (a 429 or 402, or a quick run): a normal request.
        self.outcomes.append(Outcome("t2i", response.status_code, gid))

    def bad(self) -> None:
        body = {**self.t2i_body(SD1), "steps": self.rng.choice([0, 5, 51, "ten"])}
        self.send("bad", "POST", f"/v1/generation/{SD1}/text-to-image", new_id(), json=body)

    def attack(self) -> None:
        """Past a bound (400, nothing reserved), or half a request head held open."""
        kind = self.rng.choice(["prompts", "prompt", "body", "half"])
        if kind == "half":
            origin = httpx.URL(self.base_url)
            try:
                connection = socket.create_connection((origin.host, origin.port or 80))
            except OSError as exc:  # the server is down (the crash round)
                self.outcomes.append(Outcome("oversized", None, None, repr(exc)))
                time.sleep(0.2)
                return
            try:
                connection.sendall(HALF_SENT)
            except OSError:  # it closed first (over the cap, or going down): nothing to hold
                connection.close()
                return
            self.half_sent.append(connection)
            return
        body = self.t2i_body(SD1)
        if kind == "prompts":
            body["text_prompts"] = [{"text": f"p{i}"} for i in range(11)]
        elif kind == "prompt":
            body["text_prompts"] = [{"text": "x" * 2001}]
        else:
            body["extras"] = {"padding": "x" * (1024 * 1024)}
        path = f"/v1/generation/{SD1}/text-to-image"
        self.send("oversized", "POST", path, new_id(), json=body)


def new_id() -> str:
    return f"load-{uuid.uuid4().hex}"


@dataclass
class Round:
    outcomes: list[Outcome]
    hung_up: list[str]
    started: float
    half_sent: list[socket.socket]


def closed_by_the_server(connections: list[socket.socket]) -> list[bytes]:
    """Read each half-sent connection to its end (the server must close it within its header
    timeout, with a 408 or nothing); what each got. Fails on one the server holds."""
    answers = []
    for connection in connections:
        connection.settimeout(HEADER_TIMEOUT_S + 30)
        received = b""
        with connection:
            try:
                while chunk := connection.recv(65536):
                    received += chunk
            except ConnectionResetError:
                pass
            except TimeoutError:
                pytest.fail("a half-sent connection was held open past the header timeout")
        answers.append(received)
    return answers


def run_load(
    deployment: Deployment,
    keys: list[str],
    seconds: float,
    seed: int,
    during: Callable[[], None] | None = None,
) -> Round:
    """CLIENTS clients for `seconds`; `during` runs meanwhile (the crash round's kill)."""
    outcomes: list[Outcome] = []
    # keys: two rich organizations, then a poor one; one client spends the poor one's credits.
    rich, poor = keys[:-1], keys[-1]
    clients = [
        LoadClient(
            deployment.server.base_url,
            poor if i == 2 else rich[i % len(rich)],
            seed * 1000 + i,
            outcomes,
        )
        for i in range(CLIENTS)
    ]
    started = time.monotonic()
    until = started + seconds
    threads = [
        threading.Thread(target=c.run, args=(until, 2 * i), daemon=True)
        for i, c in enumerate(clients)
    ]
    for thread in threads:
        thread.start()
    if during is not None:
        during()
    for thread in threads:
        thread.join(timeout=seconds + 400)
        assert not thread.is_alive(), "a load client never finished"
    return Round(
        outcomes,
        [gid for c in clients for gid in c.hung_up],
        started,
        [connection for c in clients for connection in c.half_sent],
    )


def settled_books(deployment: Deployment, timeout: float = 120) -> Books:
    """The books once no generation is queued or running (cancelled hang-ups finish a step)."""
    deadline = time.monotonic() + timeout
    while True:
        books = deployment.books()
        if all(r.status not in ("queued", "running") for r in books.records.values()):
            return books
        assert time.monotonic() < deadline, "generations still unfinished"
        time.sleep(0.5)


def answered_images(outcomes: list[Outcome]) -> set[str]:
    """The ids of the generations whose images a client received."""
    return {
        o.generation_id
        for o in outcomes
        if o.generation_id and o.status == 200 and o.kind in (*GENERATING, "poll")
    }


def wrong_answers(outcomes: list[Outcome], transport_errors_after: float | None) -> list[Any]:
    wrong = []
    for o in outcomes:
        if o.status is None:
            if transport_errors_after is None or o.at < transport_errors_after:
                wrong.append(o)
        elif o.status not in ALLOWED[o.kind] | {429}:
            wrong.append(o)
    return wrong


@pytest.fixture(scope="module", params=DATABASES)
def loaded(
    request: pytest.FixtureRequest, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Deployment, list[str]]:
    """A deployment on every tiny engine and keys of three organizations: two with plenty of
    credits, one with enough for only a few generations (it meets 402)."""
    directory = tmp_path_factory.mktemp(f"load_{request.param}")
    # Rate limits stay on, high enough that generations, not 429s, make the load.
    deployment = start_deployment(
        tiny_dir,
        directory,
        request.param,
        request,
        all_engines=True,
        LOCALSTABILITY_RATE_LIMIT_REQUESTS="1000",
        LOCALSTABILITY_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
    )
    keys = [
        deployment.new_key("load-a@example.com", credits=100_000.0),
        deployment.new_key("load-b@example.com", credits=100_000.0),
        deployment.new_key("load-poor@example.com", credits=0.05),
    ]
    return deployment, keys


def test_clients_mixing_every_endpoint_get_answers_and_the_books_settle(
    loaded: tuple[Deployment, list[str]],
) -> None:
    deployment, keys = loaded
    load = run_load(deployment, keys, SECONDS, seed=1)
    kinds = {o.kind for o in load.outcomes}
    assert kinds >= set(ALLOWED) - {"cancel"}, kinds  # every kind of request was made
    wrong = wrong_answers(load.outcomes, None)
    assert not wrong, wrong[:20]
    assert load.half_sent, "no half-sent connection was made"
    for answer in closed_by_the_server(load.half_sent):
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    books = settled_books(deployment)
    books.assert_settled()
    images = answered_images(load.outcomes)
    succeeded = {gid for gid, r in books.records.items() if r.status == "succeeded"}
    assert images, "no generation succeeded under load"
    assert images <= succeeded, images - succeeded
    assert succeeded - images <= set(load.hung_up), succeeded - images - set(load.hung_up)
    for gid in load.hung_up:  # a client that hung up is cancelled (or had just finished)
        if gid in books.records:  # else it hung up before its request was even admitted
            assert books.records[gid].status in ("cancelled", "succeeded"), books.records[gid]
    # What each client is told it has is what the ledger says.
    audits = {audit.organization_id: audit for audit in books.audits}
    for key, org in organizations(deployment, keys).items():
        with httpx.Client(base_url=deployment.server.base_url, timeout=30) as http:
            shown = http.get("/v1/user/balance", headers={"Authorization": f"Bearer {key}"})
        assert shown.json()["credits"] == pytest.approx(audits[org].balance / 1e6, abs=1e-6)
    assert_no_server_errors(deployment.server)


def organizations(deployment: Deployment, keys: list[str]) -> dict[str, str]:
    """Each key's default organization."""
    found = {}
    for key in keys:
        with httpx.Client(base_url=deployment.server.base_url, timeout=30) as http:
            account = http.get("/v1/user/account", headers={"Authorization": f"Bearer {key}"})
        found[key] = next(o["id"] for o in account.json()["organizations"] if o["is_default"])
    return found


def test_a_crash_under_load_loses_nothing_and_the_server_serves_again(
    loaded: tuple[Deployment, list[str]],
) -> None:
    deployment, keys = loaded
    killed_at: list[float] = []

    def kill_while_generating() -> None:
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            records = deployment.books().records.values()
            if time.monotonic() > deadline - SECONDS / 2 and any(
                r.status == "running" for r in records
            ):
                break
            time.sleep(0.2)
        killed_at.append(time.monotonic())
        deployment.server.process.kill()  # SIGKILL: no shutdown code runs
        deployment.server.process.wait()

    load = run_load(deployment, keys, SECONDS, seed=2, during=kill_while_generating)
    assert killed_at
    closed_by_the_server(load.half_sent)  # by the dying server, if not before
    wrong = wrong_answers(load.outcomes, killed_at[0])
    assert not wrong, wrong[:20]
    held = {
        gid for gid, r in deployment.books().records.items() if r.status in ("queued", "running")
    }
    assert held, "nothing was queued or running at the kill"

    deployment.restart()
    books = settled_books(deployment)
    books.assert_settled()
    # No record lost: every generation a client was answered 200 or 202 for is on the books.
    answered = {
        o.generation_id
        for o in load.outcomes
        if o.generation_id and o.status in (200, 202) and o.kind in (*GENERATING, "async")
    }
    assert answered <= set(books.records), answered - set(books.records)
    assert answered_images(load.outcomes) <= {
        gid for gid, r in books.records.items() if r.status == "succeeded"
    }
    for gid in held:  # what ran or waited at the kill was refunded (assert_settled checked it)
        record = books.records[gid]
        assert record.status == "failed" and "interrupted" in (record.error or ""), record
    # The server serves again, and answers for an interrupted generation from its record.
    key_of = {org: key for key, org in organizations(deployment, keys).items()}
    interrupted = sorted(held)[0]
    owner = key_of[books.records[interrupted].organization_id]
    with httpx.Client(
        base_url=deployment.server.base_url,
        headers={"Authorization": f"Bearer {owner}"},
        timeout=TIMEOUT,
    ) as http:
        assert_envelope(http.get(f"/v1/generation/{interrupted}"), 500, "generation_interrupted")
    with httpx.Client(
        base_url=deployment.server.base_url,
        headers={"Authorization": f"Bearer {keys[0]}"},
        timeout=TIMEOUT,
    ) as http:
        response = http.post(
            f"/v1/generation/{SD1}/text-to-image",
            json=t2i_body(width=320, height=320, steps=10),
        )
        assert response.status_code == 200, response.text
    settled_books(deployment).assert_settled()
