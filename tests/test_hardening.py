"""What a hostile client tried, through HTTP and the process, as it would reach us: too many
prompts, a job that holds the device while a DELETE waits, a restart whose new process takes
the dead one's PID, records that grow for free, probing other organizations' ids, progress
totals and grants that round to nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from localstability.inference.control import JobCancelled, StepControl
from localstability.protocol import MAX_TEXT_PROMPTS
from localstability.service.records import PROMPT_CHARS
from localstability.testing import ServerProcess, start_server
from tests.conftest import ADMIN_KEY, Deployment, Server, start_deployment
from tests.helpers import encode, sample_picture, t2i_body
from tests.test_accounts_engines import assert_envelope

SD1 = "stable-diffusion-v1-6"
SDXL = "stable-diffusion-xl-1024-v1-0"
ASYNC = {"Prefer": "respond-async"}


def prompts(count: int, text: str = "a red circle") -> list[dict[str, Any]]:
    return [{"text": f"{text} {i}", "weight": 1.0} for i in range(count)]


def client_of(server: ServerProcess, key: str, **headers: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {key}", **headers},
        timeout=300,
    )


def organization_of(client: httpx.Client) -> str:
    org: str = client.get("/v1/user/account").json()["organizations"][0]["id"]
    return org


# -- bounds on what one request may ask -------------------------------------------------------


def test_more_prompts_than_the_bound_get_a_400(client: httpx.Client) -> None:
    over = MAX_TEXT_PROMPTS + 1
    t2i = client.post(
        f"/v1/generation/{SD1}/text-to-image", json=t2i_body(text_prompts=prompts(over))
    )
    body = assert_envelope(t2i, 400, "bad_request")
    assert "text_prompts" in body["message"] and str(MAX_TEXT_PROMPTS) in body["message"]
    fields = {f"text_prompts[{i}][text]": f"p{i}" for i in range(over)}
    i2i = client.post(
        f"/v1/generation/{SD1}/image-to-image",
        data=fields,
        files={"init_image": ("init.png", encode(sample_picture(64, 64)), "image/png")},
    )
    assert_envelope(i2i, 400, "bad_request")
    upscale = client.post(
        "/v1/generation/stable-diffusion-x4-latent-upscaler/image-to-image/upscale",
        data=fields,
        files={"image": ("small.png", encode(sample_picture(64, 64)), "image/png")},
    )
    assert_envelope(upscale, 400, "bad_request")
    # The bound itself is served.
    ok = client.post(
        f"/v1/generation/{SD1}/text-to-image",
        json=t2i_body(text_prompts=prompts(MAX_TEXT_PROMPTS)),
    )
    assert ok.status_code == 200, ok.text


def test_the_prompt_phase_stops_at_the_next_prompt_once_cancelled(tiny_dir: Path) -> None:
    """A cancelled job stops between two prompt encodings, not after all of them."""
    from diffusers import StableDiffusionPipeline

    from localstability.engines import Family
    from localstability.inference.prompts import WeightedPrompt, stack_prompt_embeddings

    class CancelledAtThird(StepControl):
        checks = 0

        def check(self) -> None:
            self.checks += 1
            if self.checks == 3:
                self.cancel()
            super().check()

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_dir / "sd1"))
    texts = [WeightedPrompt(f"prompt {i}", 1.0) for i in range(MAX_TEXT_PROMPTS)]
    control = CancelledAtThird()
    with pytest.raises(JobCancelled):
        stack_prompt_embeddings(pipe, [(texts, 1)], pipe.device, control, family=Family.SD1)
    assert control.checks == 3


# -- a load that takes long is no reason to keep a cancelled job ------------------------------


@pytest.fixture
def stalled_hub() -> Iterator[socket.socket]:
    """A loopback 'hub' that takes connections and never answers them."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    with listener:
        yield listener


def test_a_job_waiting_for_a_download_is_cancelled_at_once(
    tiny_dir: Path, tmp_path: Path, request: pytest.FixtureRequest, stalled_hub: socket.socket
) -> None:
    """SD 2.1 comes from a hub that never answers: its job waits in the queue while the
    download is tried in the background, an engine already loaded serves meanwhile, and a
    DELETE ends the waiting job at once and refunds it."""
    deployment = start_deployment(
        tiny_dir,
        tmp_path / "stalled",
        "sqlite",
        request,
        replace={str(tiny_dir / "sd2"): "example/never-answers"},
        HF_HUB_OFFLINE="0",
        HF_ENDPOINT=f"http://127.0.0.1:{stalled_hub.getsockname()[1]}",
        LOCALSTABILITY_OFFLINE="false",
    )
    key = deployment.new_key("wait@example.com", credits=10.0)
    other = deployment.new_key("meanwhile@example.com", credits=10.0)
    small = t2i_body(width=320, height=320)
    sd1 = f"/v1/generation/{SD1}/text-to-image"
    with client_of(deployment.server, key) as client, client_of(deployment.server, other) as b:
        assert b.post(sd1, json=small).is_success  # SD 1.6 loaded before the download starts
        started = client.post(
            "/v1/generation/stable-diffusion-512-v2-1/text-to-image",
            json=t2i_body(),
            headers=ASYNC,
        )
        assert started.status_code == 202, started.text
        generation_id = started.headers["Generation-Id"]
        # The loaded engine serves while the download hangs; the waiting job stays queued.
        assert b.post(sd1, json=small).is_success
        assert client.get(f"/v1/generation/{generation_id}").json()["status"] == "queued"
        asked = time.monotonic()
        cancelled = client.delete(f"/v1/generation/{generation_id}")
        took = time.monotonic() - asked
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        assert took < 5, f"the DELETE took {took:.1f} s"
        assert client.get("/v1/user/balance").json()["credits"] == 10.0
        # The hub goes away: its download fails, for nobody, and the device serves on.
        stalled_hub.close()
        assert client.post(sd1, json=small).is_success


# -- recovery: a restarted server that has the dead one's PID ---------------------------------

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]


def _unshare_works() -> bool:
    try:
        return subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _unshare_works(), reason="needs PID namespaces (unshare, as root)")
def test_a_server_restarted_as_pid_1_refunds_what_pid_1_held(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """As in a container: the server is PID 1 in its own PID namespace, is killed while
    generations run and wait, and comes back as PID 1 again."""
    from localstability.store import ledger
    from localstability.store.db import Database
    from localstability.store.models import Runner

    env = {"LOCALSTABILITY_DATA_DIR": str(tmp_path / "data")}
    config = tmp_path / "localstability.toml"
    config.write_text((tiny_dir / "localstability.toml").read_text())
    log = tmp_path / "server.log"
    first = start_server(config, log, env=env, prefix=UNSHARE)
    key_text = first.key
    second: ServerProcess | None = None
    database = Database(f"sqlite:///{tmp_path / 'data' / 'localstability.db'}")
    try:
        with database.session() as session:
            assert [r.pid for r in session.query(Runner).all()] == [1]
        with client_of(first, key_text, **ASYNC) as client:
            org = organization_of(client)
            with database.session() as session:
                before = ledger.audit(session, org)
            ids = [
                client.post(
                    f"/v1/generation/{SD1}/text-to-image", json=t2i_body(steps=50, samples=2)
                ).headers["Generation-Id"]
                for _ in range(3)
            ]
            deadline = time.monotonic() + 120
            while client.get(f"/v1/generation/{ids[0]}").json()["status"] != "running":
                assert time.monotonic() < deadline
                time.sleep(0.05)
        first.process.send_signal(signal.SIGKILL)  # unshare dies, and takes PID 1 with it
        first.process.wait()
        with database.session() as session:
            held = ledger.audit(session, org)
            assert held.reserved > 0 and held.adds_up
        second = start_server(config, log, env=env, prefix=UNSHARE)
        with database.session() as session:
            check = ledger.audit(session, org)
            assert (check.balance, check.reserved) == (before.balance, 0) and check.adds_up
            assert [r.pid for r in session.query(Runner).all()] == [1]  # only the new one
        with client_of(second, key_text) as client:
            for generation_id in ids:
                answer = client.get(f"/v1/generation/{generation_id}")
                assert_envelope(answer, 500, "generation_interrupted")
    finally:
        database.dispose()
        for server in (first, second):
            if server is not None:  # unshare passes no SIGTERM on: SIGKILL takes PID 1 too
                server.process.kill()
                server.process.wait()


def test_a_runner_whose_pid_lives_on_is_dead_once_it_is_not_heard_of(
    tiny_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A record whose runner's PID now belongs to another live process (this test's own) is
    refunded once that runner has not been seen for runner_timeout_s; a runner elsewhere
    that is still heard of keeps what it holds."""
    from sqlalchemy import update

    from localstability.engines import Family, Task
    from localstability.inference.loader import WeightSource
    from localstability.inference.tasks import TaskRun
    from localstability.jobs.base import JobSpec
    from localstability.service.billing import Billing
    from localstability.store import ledger
    from localstability.store.db import Database
    from localstability.store.models import Generation, Runner, utcnow

    deployment = start_deployment(
        tiny_dir,
        tmp_path / "runners",
        "sqlite",
        request,
        LOCALSTABILITY_RUNNER_HEARTBEAT_S="0.2",
        LOCALSTABILITY_RUNNER_TIMEOUT_S="6",
    )
    with client_of(deployment.server, deployment.server.key) as client:
        org = organization_of(client)
        account = client.get("/v1/user/account").json()
    database = Database(deployment.database_url)

    def statuses() -> dict[str, str]:
        with database.session() as session:
            return {g.runner or "": g.status.value for g in session.query(Generation).all()}

    def wait_until(done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 60
        while not done():
            assert time.monotonic() < deadline, statuses()
            time.sleep(0.1)

    try:
        with database.session() as session:
            held_before = ledger.audit(session, org)
        # Two processes that hold generations while the server runs: one on this host whose
        # PID is now this live test process, silent for an hour; one on another machine,
        # heard of just now.
        reused, elsewhere = Billing(database), Billing(database)
        elsewhere.host = "another-machine"
        weights = WeightSource(SD1, Family.SD1, "unused")
        for billing in (reused, elsewhere):
            billing.heartbeat()  # the runner first: a record whose runner is unknown is dead
            spec = JobSpec(
                id=uuid.uuid4().hex,
                organization_id=org,
                user_id=account["id"],
                key_id=0,
                engine_id=SD1,
                run=TaskRun(Task.TEXT_TO_IMAGE, weights, {}),
                inputs={},
                cost=1_000_000,
            )
            billing.reserve(spec)
        with database.session.begin() as session:
            session.execute(
                update(Runner)
                .where(Runner.id == reused.runner)
                .values(pid=os.getpid(), seen_at=utcnow() - timedelta(hours=1))
            )
        wait_until(lambda: statuses()[reused.runner] == "failed")
        # The other machine was heard of less than runner_timeout_s ago: it keeps its own.
        assert statuses()[elsewhere.runner] == "queued"
        # It is never heard of again: after runner_timeout_s it is dead too.
        wait_until(lambda: statuses()[elsewhere.runner] == "failed")
        with database.session() as session:
            check = ledger.audit(session, org)
        assert check.adds_up and check.reserved == 0
        assert check.balance == held_before.balance
    finally:
        database.dispose()


# -- records stay small, and go ---------------------------------------------------------------


def test_submit_and_cancel_leaves_small_records_that_are_purged(
    tiny_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from sqlalchemy import Integer, func, select

    from localstability.store import ledger
    from localstability.store.db import Database
    from localstability.store.models import Generation

    deployment = start_deployment(
        tiny_dir,
        tmp_path / "purge",
        "sqlite",
        request,
        LOCALSTABILITY_RUNNER_HEARTBEAT_S="0.5",
        LOCALSTABILITY_REFUNDED_RETENTION_HOURS="0.001",  # 3.6 s
    )
    key = deployment.new_key("bloat@example.com", credits=10.0)
    # The largest body a client may send: every prompt at its longest, and extras that
    # fill the rest of the 1 MiB JSON limit.
    body = t2i_body(
        steps=50,
        text_prompts=prompts(MAX_TEXT_PROMPTS, "x" * 1990),
        extras={f"k{i}": "y" * 1000 for i in range(900)},
    )
    assert len(json.dumps(body)) > 900_000
    database = Database(deployment.database_url)
    try:
        with client_of(deployment.server, key, **ASYNC) as client:
            org = organization_of(client)
            for _ in range(10):
                started = client.post(f"/v1/generation/{SDXL}/text-to-image", json=body)
                assert started.status_code == 202, started.text
                client.delete(f"/v1/generation/{started.headers['Generation-Id']}")
            with database.session() as session:
                sizes = session.scalars(
                    select(func.length(Generation.parameters, type_=Integer)).where(
                        Generation.organization_id == org
                    )
                ).all()
                [record] = session.query(Generation).limit(1).all()
            assert len(sizes) == 10 and max(sizes) < 4096, sizes
            assert record.parameters["text_prompts"][0]["text"] == "x" * PROMPT_CHARS
            assert record.parameters["prompts_cut_at"] == PROMPT_CHARS
            assert len(record.parameters["extras"]) == 16
            deadline = time.monotonic() + 60
            while True:
                with database.session() as session:
                    left = session.scalar(
                        select(func.count())
                        .select_from(Generation)
                        .where(Generation.organization_id == org)
                    )
                    check = ledger.audit(session, org)
                if not left:
                    break
                assert time.monotonic() < deadline, f"{left} records were never purged"
                time.sleep(0.5)
            assert check.adds_up and check.balance == 10_000_000
            with database.session() as session:
                assert [e.kind.value for e in ledger.entries(session, org)] == ["grant"]
    finally:
        database.dispose()
    purged = deployment.admin("ledger", "purge", "--charged-days", "0", "--refunded-hours", "1")
    assert purged == "purged 0 generation record(s)"


# -- one organization's ids are its own --------------------------------------------------------


def test_another_organizations_id_is_indistinguishable_from_a_free_one(
    deployment: Deployment,
) -> None:
    mine = deployment.new_key(f"mine-{uuid.uuid4().hex[:6]}@example.com", credits=5.0)
    theirs = deployment.new_key(f"theirs-{uuid.uuid4().hex[:6]}@example.com", credits=5.0)
    taken, free = f"taken-{uuid.uuid4().hex[:8]}", f"free-{uuid.uuid4().hex[:8]}"
    t2i = f"/v1/generation/{SD1}/text-to-image"
    with (
        client_of(deployment.server, mine) as me,
        client_of(deployment.server, theirs) as them,
    ):
        assert me.post(t2i, json=t2i_body(), headers={"Generation-Id": taken}).is_success
        # Their requests answer the same for my id as for an id nobody used.
        for generation_id in (taken, free):
            assert_envelope(them.get(f"/v1/generation/{generation_id}"), 404, "not_found")
            assert_envelope(them.delete(f"/v1/generation/{generation_id}"), 404, "not_found")
            assert_envelope(them.get(f"/v1/generation/{generation_id}/events"), 404, "not_found")
        # ...and they may use it for a generation of their own.
        again = them.post(t2i, json=t2i_body(seed=7), headers={"Generation-Id": taken})
        assert again.status_code == 200, again.text
        assert again.headers["Generation-Id"] == taken
        assert them.get(f"/v1/generation/{taken}").json() == again.json()
        assert me.get(f"/v1/generation/{taken}").json() != again.json()
        # Within one organization an id is still used once.
        assert_envelope(
            me.post(t2i, json=t2i_body(), headers={"Generation-Id": taken}),
            409,
            "duplicate_generation_id",
        )
    deployment.books().assert_settled()


# -- small items --------------------------------------------------------------------------------


def test_an_esrgan_upscale_counts_its_tiles_not_30_steps(server: Server) -> None:
    with server.client(**ASYNC) as client:
        started = client.post(
            "/v1/generation/esrgan-v1-x2plus/image-to-image/upscale",
            files={"image": ("small.png", encode(sample_picture(64, 64)), "image/png")},
        )
        assert started.status_code == 202, started.text
        assert started.json()["progress"]["total"] != 30
        events = []
        with client.stream(
            "GET", f"/v1/generation/{started.headers['Generation-Id']}/events"
        ) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line.removeprefix("data:")))
    totals = {event["progress"]["total"] for event in events}
    assert events[-1]["status"] == "succeeded"
    assert 30 not in totals and events[-1]["progress"]["total"] >= 1, events


def test_grants_below_one_micro_credit_are_refused(deployment: Deployment) -> None:
    admin = httpx.Client(
        base_url=deployment.server.base_url,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=60,
    )
    with admin:
        created = admin.post("/admin/v1/organizations", json={"name": "tiny", "credits": 1})
        org = created.json()["id"]
        before = admin.get(f"/admin/v1/organizations/{org}/ledger").json()
        refused = admin.post(f"/admin/v1/organizations/{org}/grants", json={"credits": 0.0000004})
        assert_envelope(refused, 400, "bad_request")
        assert "micro-credit" in refused.json()["message"]
        after = admin.get(f"/admin/v1/organizations/{org}/ledger").json()
    assert after["entries"] == before["entries"]
    cli = deployment.admin  # the CLI says the same, with exit status 1
    with pytest.raises(RuntimeError, match="micro-credit"):
        cli("orgs", "grant", "--org", org, "0.0000004")
