"""Shared fixtures: tiny models built offline, and a real server process serving them."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from localstability.testing import (
    OFFLINE_ENV,
    PostgresServer,
    RedisServer,
    ServerProcess,
    WorkerProcess,
    run_cli,
    start_postgres,
    start_redis,
    start_server,
    start_worker,
)

REPO = Path(__file__).resolve().parents[1]
Server = ServerProcess

__all__ = ["REPO", "Server", "run_cli"]


def admin_cli(env: dict[str, str], *args: str) -> str:
    """`localstability ARGS` run in this process with `env`'s settings (and no other
    LOCALSTABILITY_* variable, offline, as `run_cli` gives a subprocess): the command's own
    Typer app, argument parsing and output, without starting an interpreter that imports
    SQLAlchemy and Alembic each time (about 1.5 s of CPU a call). Its output, stripped.

    The tests that are about the command itself (test_cli.py) still run it as a process."""
    from typer.testing import CliRunner

    from localstability.cli import app

    unset: dict[str, str | None] = dict.fromkeys(
        (name for name in os.environ if name.startswith("LOCALSTABILITY_")), None
    )
    result = CliRunner().invoke(
        app, list(args), env={**unset, **OFFLINE_ENV, **env}, catch_exceptions=False
    )
    if result.exit_code != 0:
        raise RuntimeError(f"localstability {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout.strip()


# The test deployments run with both content filters on (tests/test_safety.py): prompts are
# blocked by the shipped word list, and the output filter blurs what NudeNet sees as a woman's
# face, so that a public-domain photo (scikit-image's astronaut) shows it; the tiny models'
# noise and the tests' drawn pictures hold no face.
SAFETY_ENV = {
    "LOCALSTABILITY_SAFETY__PROMPT_FILTER": "block",
    "LOCALSTABILITY_SAFETY__OUTPUT_FILTER": "nudenet",
    "LOCALSTABILITY_SAFETY__OUTPUT_LABELS": '["FACE_FEMALE"]',
}


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random-weight SD1, SD2 and SDXL pipelines and their config (built in seconds)."""
    directory = tmp_path_factory.mktemp("tiny")
    run_cli("models", "make-tiny", str(directory))
    return directory


@pytest.fixture(scope="session")
def server(tiny_dir: Path) -> Iterator[Server]:
    """`localstability serve` on a free loopback port with the tiny models."""
    running = start_server(
        tiny_dir / "localstability.toml", tiny_dir / "server.log", env=SAFETY_ENV
    )
    yield running
    running.stop()


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server on a loopback port, stopped by the fixture."""
    server = start_postgres()
    yield server
    server.stop()


def log_records(server: Server) -> list[dict[str, Any]]:
    """The server's structured log lines (one JSON object each; other lines skipped)."""
    records = []
    for line in server.logs().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def assert_no_server_errors(server: Server) -> list[dict[str, Any]]:
    """No request was answered 5xx and nothing was logged at error level; the records."""
    records = log_records(server)
    # Request lines carry the HTTP status as a number (job lines a word such as "succeeded").
    answered = [r["status"] for r in records if isinstance(r.get("status"), int)]
    assert not [status for status in answered if status >= 500], "a 5xx was answered"
    assert not [r for r in records if r.get("level") == "ERROR"], "an error was logged"
    return records


DATABASES = ["sqlite", "postgresql"]
ADMIN_KEY = "test-admin-key-4d1f0c8e2b7a9d3f6e5c1b0a"


@dataclass
class Record:
    organization_id: str
    status: str  # queued, running, succeeded, failed, cancelled
    cost: int  # micro-credits
    error: str | None


def error_of(record: Any) -> str | None:
    """A record's error as the admin CLI shows it: "name: message"."""
    return f"{record.error_name}: {record.error}" if record.error_name else record.error


@dataclass
class Books:
    """A deployment's accounts as its database holds them."""

    audits: list[Any]  # localstability.store.ledger.Audit, one per organization
    every: list[tuple[str, Record]]  # every generation record, with its id
    # (organization, generation id, entry kind) -> micro-credits
    moved: dict[tuple[str, str, str], int]

    @property
    def records(self) -> dict[str, Record]:
        """The records by id (ids that several organizations use: one of them)."""
        return dict(self.every)

    def assert_settled(self) -> None:
        """Every ledger adds up and holds nothing back; no generation is unfinished; each one
        reserved its cost once and then was charged it (succeeded) or refunded it, once."""
        assert self.audits
        for audit in self.audits:
            assert audit.adds_up, audit
            assert audit.reserved == 0, audit
        for generation_id, record in self.every:
            assert record.status in ("succeeded", "failed", "cancelled"), (generation_id, record)
            if record.cost <= 0:
                continue
            settled = "charge" if record.status == "succeeded" else "refund"
            unsettled = "refund" if settled == "charge" else "charge"
            key = (record.organization_id, generation_id)
            moved = {kind: self.moved.get((*key, kind)) for kind in ("reserve", settled)}
            assert moved == {"reserve": record.cost, settled: record.cost}, (generation_id, record)
            assert (*key, unsettled) not in self.moved, (generation_id, record)


@dataclass
class Deployment:
    """A server of its own (own data dir and database) with the admin CLI pointed at it."""

    server: Server
    env: dict[str, str]
    config: Path

    def admin(self, *args: str) -> str:
        return admin_cli(self.env, *args, "--config", str(self.config))

    def admin_json(self, *args: str) -> Any:
        return json.loads(self.admin(*args, "--json"))

    def new_key(self, email: str, credits: float = 0.0) -> str:
        return self.admin("keys", "create", "--email", email, "--credits", str(credits))

    @property
    def database_url(self) -> str:
        return self.env.get("LOCALSTABILITY_DATABASE_URL") or (
            f"sqlite:///{Path(self.env['LOCALSTABILITY_DATA_DIR']) / 'localstability.db'}"
        )

    def books(self) -> Books:
        """Every organization's ledger audit, generation record and credit movement."""
        from sqlalchemy import func, select

        from localstability.store import ledger
        from localstability.store.db import Database
        from localstability.store.models import Generation, LedgerEntry, Organization

        database = Database(self.database_url)
        try:
            with database.session() as session:
                audits = [ledger.audit(session, o.id) for o in session.query(Organization).all()]
                every = [
                    (g.id, Record(g.organization_id, g.status.value, g.cost, error_of(g)))
                    for g in session.query(Generation).all()
                ]
                entry = LedgerEntry
                moved = session.execute(
                    select(
                        entry.organization_id,
                        entry.generation_id,
                        entry.kind,
                        func.sum(entry.amount),
                    )
                    .where(entry.generation_id.is_not(None))
                    .group_by(entry.organization_id, entry.generation_id, entry.kind)
                ).all()
                sums = {(str(o), str(g), k.value): int(a) for o, g, k, a in moved}
                return Books(audits, every, sums)
        finally:
            database.dispose()

    def restart(self) -> None:
        self.server.stop()
        self.server = start_server(self.config, self.server.log_path, env=self.env)

    def member_keys(self, organization_id: str, count: int, label: str) -> list[str]:
        """`count` new users of the organization, one key each (in-process: quicker)."""
        from localstability.store import accounts
        from localstability.store.db import Database

        database = Database(self.database_url)
        try:
            with database.session.begin() as session:
                keys = []
                for i in range(count):
                    email = f"{label}{i}@example.com"
                    user = accounts.add_user(session, email)
                    accounts.add_member(session, email, organization_id, default=True)
                    keys.append(accounts.create_key(session, user.id))
                return keys
        finally:
            database.dispose()


def start_deployment(
    tiny_dir: Path,
    directory: Path,
    database: str,
    request: pytest.FixtureRequest,
    all_engines: bool = False,
    replace: dict[str, str] | None = None,
    **env: str,
) -> Deployment:
    """`localstability serve` with the tiny models on SQLite or on the session's PostgreSQL.

    Unless `all_engines`, the latent upscaler's weights are missing: its jobs fail after the
    reservation (a failure the billing tests need). `replace` swaps engine sources."""
    directory.mkdir(parents=True, exist_ok=True)
    env = {
        "LOCALSTABILITY_DATA_DIR": str(directory / "data"),
        "LOCALSTABILITY_ADMIN_KEY": ADMIN_KEY,
        **SAFETY_ENV,
        **env,
    }
    if database == "postgresql":
        pg: PostgresServer = request.getfixturevalue("postgres")
        env["LOCALSTABILITY_DATABASE_URL"] = pg.create_database(directory.name.lower())
    config = directory / "localstability.toml"
    text = (tiny_dir / "localstability.toml").read_text()
    if not all_engines:
        text = text.replace(str(tiny_dir / "sd-x4-upscaler"), str(directory / "missing-weights"))
    for old, new in (replace or {}).items():
        text = text.replace(f'"{old}"', f'"{new}"')
    config.write_text(text)
    deployment = Deployment(start_server(config, directory / "server.log", env=env), env, config)
    request.addfinalizer(lambda: deployment.server.stop())
    return deployment


@pytest.fixture(scope="session")
def mcp_deployment(
    request: pytest.FixtureRequest, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Deployment:
    """The MCP tests' billed server (SQLite), every engine's weights present."""
    return start_deployment(
        tiny_dir, tmp_path_factory.mktemp("mcp"), "sqlite", request, all_engines=True
    )


@pytest.fixture(scope="session")
def operator(
    request: pytest.FixtureRequest, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Deployment:
    """A deployment with the operator's own prompt filter: no shipped list, a word, a file of
    phrases and a classifier of its own; and a v2beta model mapped to an engine it lacks."""
    directory = tmp_path_factory.mktemp("operator")
    words = directory / "words.txt"
    words.write_text("# the operator's phrases\nsea serpent\n")
    return start_deployment(
        tiny_dir,
        directory,
        "sqlite",
        request,
        PYTHONPATH=str(REPO),  # the classifier lives in tests/safety_hook.py
        LOCALSTABILITY_SAFETY__PROMPT_WORDS_BUILTIN="false",
        LOCALSTABILITY_SAFETY__PROMPT_WORDS='["kraken"]',
        LOCALSTABILITY_SAFETY__PROMPT_WORDS_FILE=str(words),
        LOCALSTABILITY_SAFETY__PROMPT_CLASSIFIER="tests.safety_hook:shouting",
        LOCALSTABILITY_SAFETY__PROMPT_CLASSIFIER_THRESHOLD="0.8",
        LOCALSTABILITY_V2BETA_ENGINES='{"sd3.5-flash": "no-such-engine"}',
    )


@pytest.fixture(scope="session")
def sqlite_deployment(
    request: pytest.FixtureRequest, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Deployment:
    """The billed deployment on SQLite, started once: `deployment`'s SQLite case, and the
    server of the job and batching tests (each of their keys is an organization of its own,
    and each test waits until its generations end)."""
    return start_deployment(tiny_dir, tmp_path_factory.mktemp("deploy_sqlite"), "sqlite", request)


@pytest.fixture(scope="session", params=DATABASES)
def deployment(
    request: pytest.FixtureRequest, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Deployment:
    """A billed deployment, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        shared: Deployment = request.getfixturevalue("sqlite_deployment")
        return shared
    directory = tmp_path_factory.mktemp(f"deploy_{request.param}")
    return start_deployment(tiny_dir, directory, request.param, request)


# -- the scale-out topology: two API replicas and two workers on Redis and PostgreSQL --------


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

    def replica(self, index: int) -> Deployment:
        """Replica `index` as a Deployment (same database, config and env)."""
        return Deployment(self.replicas[index], self.env, self.config)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cluster(
    tiny_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    postgres: PostgresServer,
    redis_server: RedisServer,
) -> Iterator[Cluster]:
    """`backend = "celery"` on the tiny models: two `localstability serve` replicas and two
    `localstability worker`s, one PostgreSQL database, one Redis (started by the tests)."""
    directory = tmp_path_factory.mktemp("scaleout")
    config = directory / "localstability.toml"
    # With an engine of the operator's own (tests/test_custom_engines.py): the tiny SD 1.
    own = f'\n[engines.house-sd1]\nsource = "{tiny_dir / "sd1"}"\nname = "House SD1"\n'
    config.write_text((tiny_dir / "localstability.toml").read_text() + own)
    env = {
        "LOCALSTABILITY_DATA_DIR": str(directory / "data"),
        "LOCALSTABILITY_ADMIN_KEY": ADMIN_KEY,
        "LOCALSTABILITY_DATABASE_URL": postgres.create_database("scaleout"),
        "LOCALSTABILITY_BACKEND": "celery",
        "LOCALSTABILITY_REDIS_URL": redis_server.url,
        "LOCALSTABILITY_REDIS_PREFIX": "test-scaleout:",
        "LOCALSTABILITY_RUNNER_HEARTBEAT_S": "1",
        "LOCALSTABILITY_RUNNER_TIMEOUT_S": "4",
        "LOCALSTABILITY_MAX_JOBS_PER_ORGANIZATION": "3",
        **SAFETY_ENV,
    }
    replicas: list[ServerProcess] = []
    workers: list[WorkerProcess] = []
    try:
        # Replica A first (it migrates the new database); then the other three start side by
        # side, each waited for as before (on 2 cores the workers' imports overlap).
        replicas.append(start_server(config, directory / "replica-a.log", env=env))
        with ThreadPoolExecutor(3) as pool:
            b = pool.submit(start_server, config, directory / "replica-b.log", env=env)
            started = [
                pool.submit(start_worker, config, directory / f"worker-{n}.log", env)
                for n in (1, 2)
            ]
        # Every start is over: what came up is kept (and stopped below); then any failure.
        if b.exception() is None:
            replicas.append(b.result())
        workers.extend(future.result() for future in started if future.exception() is None)
        b.result()
        for future in started:
            future.result()
        deployment = Deployment(replicas[0], env, config)
        yield Cluster(replicas, workers, deployment, config, env, directory)
    finally:
        for worker in workers:
            worker.stop()
        for replica in replicas:
            replica.stop()


TOPOLOGIES = ["embedded", "two-replica"]


def replica_b(request: pytest.FixtureRequest) -> Deployment:
    """Replica B of the session's scale-out cluster (started on first use): where the
    parametrised behaviour tests run their "two-replica" case."""
    cluster: Cluster = request.getfixturevalue("cluster")
    return cluster.replica(1)


@pytest.fixture(params=TOPOLOGIES)
def any_server(request: pytest.FixtureRequest) -> Server:
    """The shared embedded server, then replica B of the scale-out cluster: a behaviour test
    that takes it runs against both topologies."""
    if request.param == "embedded":
        server: Server = request.getfixturevalue("server")
        return server
    return replica_b(request).server


@pytest.fixture
def any_client(any_server: Server) -> Iterator[httpx.Client]:
    with any_server.client() as http:
        yield http
