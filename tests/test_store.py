"""The store on SQLite and PostgreSQL: migrations, the ledger's rules, concurrency, pricing."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.exc import IntegrityError

from localstability import errors
from localstability.service.pricing import cost_micros
from localstability.store import accounts, ledger
from localstability.store.db import MIGRATIONS, Database
from localstability.store.models import (
    Base,
    EntryKind,
    Generation,
    GenerationStatus,
    LedgerEntry,
    Organization,
)
from localstability.testing import PostgresServer
from tests.conftest import DATABASES


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    postgres: PostgresServer = request.getfixturevalue("postgres")
    return postgres.create_database(f"store_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    yield db
    db.dispose()


def test_migrations_create_the_schema_and_match_the_models(database_url: str) -> None:
    database = Database(database_url)
    try:
        tables = set(inspect(database.engine).get_table_names())
        expected = {"users", "organizations", "memberships", "api_keys", "alembic_version"}
        assert expected | {"generations", "ledger_entries"} <= tables
        with database.engine.connect() as connection:
            version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
            assert version == "0006"
            # The migrations and the SQLAlchemy models describe the same schema.
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
            assert differences == []
    finally:
        database.dispose()
    # Starting again on the same database is a no-op, not an error.
    Database(database_url).dispose()


def _alembic(url: str, action: str, revision: str) -> None:
    engine = create_engine(url)
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)
    engine.dispose()


def test_migration_0002_turns_float_credits_into_a_ledger(database_url: str) -> None:
    _alembic(database_url, "upgrade", "0001")
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO organizations (id, name, credits, created_at) VALUES "
                "('org-a', 'A', 12.5, CURRENT_TIMESTAMP), ('org-b', 'B', 0, CURRENT_TIMESTAMP)"
            )
        )
    engine.dispose()
    database = Database(database_url)  # migrates to head
    try:
        with database.session() as session:
            assert session.get(Organization, "org-a").balance == 12_500_000  # type: ignore[union-attr]
            assert session.get(Organization, "org-b").balance == 0  # type: ignore[union-attr]
            assert ledger.audit(session, "org-a").adds_up
            [entry] = session.scalars(select(LedgerEntry)).all()
            assert (entry.kind, entry.amount, entry.organization_id) == (
                EntryKind.GRANT,
                12_500_000,
                "org-a",
            )
    finally:
        database.dispose()
    _alembic(database_url, "downgrade", "0001")
    engine = create_engine(database_url)
    with engine.connect() as connection:
        result = connection.execute(text("SELECT id, credits FROM organizations"))
        rows = {str(row[0]): float(row[1]) for row in result}
        assert rows == {"org-a": 12.5, "org-b": 0.0}
        assert "ledger_entries" not in inspect(connection).get_table_names()
    engine.dispose()


def _org_with(database: Database, micros: int) -> str:
    with database.session.begin() as session:
        created = accounts.create_user(session, f"{uuid.uuid4().hex[:8]}@example.com")
        if micros:
            ledger.grant(session, created.organization_id, micros)
        return created.organization_id


def _generation(database: Database, organization_id: str, cost: int) -> Generation:
    with database.session() as session:
        user_id = (
            session.scalars(select(Organization).where(Organization.id == organization_id))
            .one()
            .memberships[0]
            .user_id
        )
    return Generation(
        id=uuid.uuid4().hex,
        organization_id=organization_id,
        user_id=user_id,
        engine_id="stable-diffusion-v1-6",
        task="text-to-image",
        parameters={"steps": 10},
        cost=cost,
    )


def test_reserve_charge_refund_each_once(database: Database) -> None:
    org = _org_with(database, 1_000)
    ok, failed = _generation(database, org, 300), _generation(database, org, 200)
    with database.session.begin() as session:
        ledger.reserve(session, ok)
        ledger.reserve(session, failed)
    with database.session.begin() as session:
        assert ledger.start(session, org, ok.id)
        charged = ledger.finish(
            session, org, ok.id, GenerationStatus.SUCCEEDED, finish_reasons=["SUCCESS"]
        )
        assert charged == 300
        refunded = ledger.finish(session, org, failed.id, GenerationStatus.CANCELLED, error="gone")
        assert refunded == 200
    with database.session.begin() as session:
        # A second end moves nothing: no double charge, no double refund.
        assert ledger.finish(session, org, ok.id, GenerationStatus.FAILED) is None
        assert ledger.finish(session, org, failed.id, GenerationStatus.SUCCEEDED) is None
        assert not ledger.start(session, org, ok.id)
    with database.session() as session:
        check = ledger.audit(session, org)
        assert (check.balance, check.reserved) == (700, 0)
        assert (check.charged, check.refunded) == (300, 200)
        assert check.adds_up
        record = session.get(Generation, (org, ok.id))
        assert record is not None and record.status == GenerationStatus.SUCCEEDED
        assert record.finish_reasons == ["SUCCESS"]
        assert isinstance(record.started_at, datetime) and record.started_at.tzinfo is not None
    # The database itself refuses a second charge entry for one generation.
    with pytest.raises(IntegrityError), database.session.begin() as session:
        session.add(
            LedgerEntry(
                organization_id=org,
                kind=EntryKind.CHARGE,
                amount=300,
                balance_after=700,
                generation_id=ok.id,
            )
        )


def test_short_balance_and_negative_grants_are_refused(database: Database) -> None:
    org = _org_with(database, 100)
    with pytest.raises(errors.InsufficientBalance), database.session.begin() as session:
        ledger.reserve(session, _generation(database, org, 101))
    with pytest.raises(errors.BadRequest), database.session.begin() as session:
        ledger.grant(session, org, -101)
    with database.session.begin() as session:
        assert ledger.grant(session, org, -100).balance_after == 0
    with database.session() as session:
        assert ledger.audit(session, org).adds_up
        assert session.scalar(select(sa.func.count()).select_from(Generation)) == 0


def test_concurrent_reservations_never_overdraw(database: Database) -> None:
    """16 threads race 20 reservations each for a balance that covers 100 of them."""
    org = _org_with(database, 100 * 7)
    generations = [[_generation(database, org, 7) for _ in range(20)] for _ in range(16)]
    outcomes: list[bool] = []
    lock = threading.Lock()

    def worker(batch: list[Generation]) -> None:
        for generation in batch:
            try:
                with database.session.begin() as session:
                    ledger.reserve(session, generation)
                ok = True
            except errors.InsufficientBalance:
                ok = False
            with lock:
                outcomes.append(ok)

    threads = [threading.Thread(target=worker, args=(batch,)) for batch in generations]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(True) == 100 and len(outcomes) == 320
    with database.session() as session:
        check = ledger.audit(session, org)
        assert (check.balance, check.reserved) == (0, 700)
        assert check.adds_up


def test_the_price_model() -> None:
    # SDXL 1.0 at 1024x1024, 30 steps, one sample: 0.2 credits, as on the hosted API.
    assert cost_micros(1.0, width=1024, height=1024, steps=30) == 200_000
    base = cost_micros(0.5, width=512, height=512, steps=30)
    assert base == 25_000
    assert cost_micros(0.5, width=512, height=512, steps=15) == base // 2
    assert cost_micros(0.5, width=512, height=512, steps=30, samples=4) == base * 4
    assert cost_micros(0.5, width=1024, height=512, steps=30) == base * 2
    assert cost_micros(0.25, width=2048, height=2048) == 200_000  # ESRGAN: no steps
    assert cost_micros(0.5, width=320, height=320, steps=10) == 3256  # rounded up
    # Every prompt past the first positive and negative one costs one more step of one sample.
    assert cost_micros(0.5, width=512, height=512, steps=30, extra_prompts=3) == base * 33 // 30


def test_a_grant_that_rounds_to_no_micro_credit_is_refused(database: Database) -> None:
    org = _org_with(database, 100)
    with pytest.raises(errors.BadRequest, match="micro-credit"), database.session.begin() as s:
        ledger.grant(s, org, ledger.micros(0.0000004))
    with database.session() as session:
        assert [e.amount for e in ledger.entries(session, org)] == [100]


def test_generation_ids_belong_to_their_organization(database: Database) -> None:
    """Two organizations may use the same id: each has its own record and its own entries."""
    first, second = _org_with(database, 1_000), _org_with(database, 1_000)
    mine, theirs = _generation(database, first, 300), _generation(database, second, 200)
    theirs.id = mine.id
    with database.session.begin() as session:
        ledger.reserve(session, mine)
    with database.session.begin() as session:
        ledger.reserve(session, theirs)
    with database.session.begin() as session:
        assert ledger.finish(session, first, mine.id, GenerationStatus.SUCCEEDED) is not None
        assert ledger.finish(session, second, mine.id, GenerationStatus.CANCELLED) is not None
    with database.session() as session:
        assert ledger.audit(session, first).balance == 700
        assert ledger.audit(session, second).balance == 1_000
        assert ledger.audit(session, first).adds_up and ledger.audit(session, second).adds_up
    # Within one organization an id is still used once.
    again = _generation(database, first, 1)
    again.id = mine.id
    with pytest.raises(IntegrityError), database.session.begin() as session:
        ledger.reserve(session, again)


def test_purge_removes_old_records_and_keeps_the_books(database: Database) -> None:
    org = _org_with(database, 1_000)
    spent, refunded, recent = (_generation(database, org, cost) for cost in (300, 200, 100))
    with database.session.begin() as session:
        for generation in (spent, refunded, recent):
            ledger.reserve(session, generation)
    with database.session.begin() as session:
        ledger.finish(session, org, spent.id, GenerationStatus.SUCCEEDED)
        ledger.finish(session, org, refunded.id, GenerationStatus.FAILED, error="x")
        ledger.finish(session, org, recent.id, GenerationStatus.CANCELLED)
    with database.session.begin() as session:
        session.execute(
            sa.update(Generation)
            .where(Generation.id.in_([spent.id, refunded.id]))
            .values(finished_at=datetime(2020, 1, 1, tzinfo=UTC))
        )
    cutoff = datetime(2021, 1, 1, tzinfo=UTC)
    with database.session.begin() as session:
        assert ledger.purge(session, GenerationStatus.SUCCEEDED, cutoff) == 1
        assert ledger.purge(session, GenerationStatus.FAILED, cutoff) == 1
        assert ledger.purge(session, GenerationStatus.CANCELLED, cutoff) == 0
    with database.session() as session:
        check = ledger.audit(session, org)
        assert check.adds_up and (check.balance, check.charged) == (700, 300)
        assert {g.id for g in session.scalars(select(Generation))} == {recent.id}
        entries = {(e.kind, e.generation_id) for e in ledger.entries(session, org)}
        # The refunded one's reserve and refund are gone; the charged one's stay, unlinked.
        assert entries == {
            (EntryKind.GRANT, None),
            (EntryKind.RESERVE, None),
            (EntryKind.CHARGE, None),
            (EntryKind.RESERVE, recent.id),
            (EntryKind.REFUND, recent.id),
        }


def test_migration_0004_keeps_records_and_entries(database_url: str) -> None:
    _alembic(database_url, "upgrade", "0003")
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (id, email, created_at) "
                "VALUES ('user-a', 'a@example.com', CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO organizations (id, name, balance, reserved, created_at) "
                "VALUES ('org-a', 'A', 700, 300, CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO generations (id, organization_id, user_id, engine_id, task, "
                "parameters, status, cost, created_at, runner) VALUES ('gen-1', 'org-a', "
                "'user-a', 'e', 'text-to-image', '{}', 'running', 300, CURRENT_TIMESTAMP, "
                "'old-host:1')"
            )
        )
        for kind, amount, balance, generation in (
            ("grant", 1000, 1000, None),
            ("reserve", 300, 700, "gen-1"),
        ):
            connection.execute(
                text(
                    "INSERT INTO ledger_entries (organization_id, kind, amount, balance_after, "
                    "generation_id, created_at) VALUES ('org-a', :kind, :amount, :balance, "
                    ":generation, CURRENT_TIMESTAMP)"
                ),
                {"kind": kind, "amount": amount, "balance": balance, "generation": generation},
            )
    engine.dispose()
    database = Database(database_url)  # migrates to head
    try:
        with database.session.begin() as session:
            record = session.get(Generation, ("org-a", "gen-1"))
            assert record is not None and record.runner == "old-host:1"
            assert ledger.finish(session, "org-a", "gen-1", GenerationStatus.FAILED) is not None
        with database.session() as session:
            check = ledger.audit(session, "org-a")
            assert check.adds_up and (check.balance, check.reserved) == (1000, 0)
            # New entries number on after the copied ones.
            assert [e.id for e in ledger.entries(session, "org-a")] == [1, 2, 3]
    finally:
        database.dispose()
