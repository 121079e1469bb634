"""Generation ids belong to their organization; server processes are runners with a boot id.

- `generations` is keyed by (organization_id, id), and `ledger_entries` refers to a
  generation by both (one reserve, charge and refund per organization's generation), so an id
  that one organization uses says nothing to another.
- `runners`: each server process registers a boot id and writes that it is alive; a record's
  `runner` is that boot id from now on (older "host:pid" values name no runner: the
  process that wrote them is gone, so recovery refunds them).
- `generations.finished_at` is indexed for the retention purge.

Both tables are rebuilt (new table, copy, drop, rename), the same way on SQLite and PostgreSQL.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 04:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_STATUS = sa.Enum(
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    name="generationstatus",
    native_enum=False,
    length=16,
)
_KIND = sa.Enum(
    "grant", "reserve", "charge", "refund", name="entrykind", native_enum=False, length=16
)
_GENERATION_COLUMNS = (
    "id",
    "organization_id",
    "user_id",
    "api_key_id",
    "engine_id",
    "task",
    "parameters",
    "status",
    "cost",
    "created_at",
    "started_at",
    "finished_at",
    "finish_reasons",
    "error",
    "runner",
    "batch_size",
)
_ENTRY_COLUMNS = (
    "id",
    "organization_id",
    "kind",
    "amount",
    "balance_after",
    "generation_id",
    "actor",
    "note",
    "created_at",
)


def _generations(name: str, scoped: bool) -> None:
    key = ["organization_id", "id"] if scoped else ["id"]
    op.create_table(
        name,
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.Column("engine_id", sa.String(length=64), nullable=False),
        sa.Column("task", sa.String(length=32), nullable=False),
        sa.Column("parameters", _JSON, nullable=False),
        sa.Column("status", _STATUS, nullable=False),
        sa.Column("cost", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finish_reasons", _JSON, nullable=True),
        sa.Column("error", sa.String(length=2000), nullable=True),
        sa.Column("runner", sa.String(length=128), nullable=True),
        sa.Column("batch_size", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"]),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"]),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint(*key),
    )


def _ledger_entries(name: str, generations: str, scoped: bool) -> None:
    if scoped:
        link = [
            sa.ForeignKeyConstraint(
                ["organization_id", "generation_id"],
                [f"{generations}.organization_id", f"{generations}.id"],
            ),
            sa.UniqueConstraint("organization_id", "generation_id", "kind"),
        ]
    else:
        link = [
            sa.ForeignKeyConstraint(["generation_id"], [f"{generations}.id"]),
            sa.UniqueConstraint("generation_id", "kind"),
        ]
    op.create_table(
        name,
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("kind", _KIND, nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("generation_id", sa.String(length=64), nullable=True),
        sa.Column("actor", sa.String(length=320), nullable=True),
        sa.Column("note", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"]),
        sa.PrimaryKeyConstraint("id"),
        *link,
    )


def _copy(source: str, target: str, columns: tuple[str, ...]) -> None:
    names = ", ".join(columns)
    op.execute(f"INSERT INTO {target} ({names}) SELECT {names} FROM {source}")


def _sync_entry_ids() -> None:
    # The copied entries kept their ids; PostgreSQL's new sequence must start past them.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "SELECT setval(pg_get_serial_sequence('ledger_entries', 'id'), "
            "COALESCE((SELECT MAX(id) FROM ledger_entries), 0) + 1, false)"
        )


def _rebuild(scoped: bool) -> None:
    """Both tables again with the key that `scoped` says, their rows carried over."""
    _generations("generations_new", scoped)
    _copy("generations", "generations_new", _GENERATION_COLUMNS)
    _ledger_entries("ledger_entries_new", "generations_new", scoped)
    _copy("ledger_entries", "ledger_entries_new", _ENTRY_COLUMNS)
    op.drop_table("ledger_entries")
    op.drop_table("generations")
    op.rename_table("generations_new", "generations")
    op.rename_table("ledger_entries_new", "ledger_entries")
    _sync_entry_ids()
    op.create_index("ix_generations_status", "generations", ["status"])
    if scoped:
        op.create_index("ix_generations_finished_at", "generations", ["finished_at"])
    else:
        op.create_index("ix_generations_organization_id", "generations", ["organization_id"])
    op.create_index("ix_ledger_entries_generation_id", "ledger_entries", ["generation_id"])
    op.create_index("ix_ledger_entries_organization_id", "ledger_entries", ["organization_id"])


def upgrade() -> None:
    op.create_table(
        "runners",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    _rebuild(scoped=True)


def downgrade() -> None:
    shared = (
        op.get_bind()
        .execute(sa.text("SELECT id FROM generations GROUP BY id HAVING COUNT(*) > 1 LIMIT 1"))
        .first()
    )
    if shared is not None:
        raise RuntimeError(
            f"generation id {shared[0]} is used by several organizations; "
            "a database before revision 0004 can't hold that"
        )
    _rebuild(scoped=False)
    op.drop_table("runners")
