"""The credit ledger and generation records; balances become integer micro-credits.

Each organization's float `credits` becomes `balance` in micro-credits (1 credit =
1,000,000) with a `grant` ledger entry for it, so that every balance is the sum of its
ledger entries from the start.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 00:10:02.368539
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

MICROS_PER_CREDIT = 1_000_000
_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "generations",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.Column("engine_id", sa.String(length=64), nullable=False),
        sa.Column("task", sa.String(length=32), nullable=False),
        sa.Column("parameters", _JSON, nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "queued",
                "running",
                "succeeded",
                "failed",
                "cancelled",
                name="generationstatus",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("cost", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finish_reasons", _JSON, nullable=True),
        sa.Column("error", sa.String(length=2000), nullable=True),
        sa.Column("runner", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"]),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"]),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_generations_organization_id", "generations", ["organization_id"])
    op.create_index("ix_generations_status", "generations", ["status"])
    ledger = op.create_table(
        "ledger_entries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "grant",
                "reserve",
                "charge",
                "refund",
                name="entrykind",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("generation_id", sa.String(length=64), nullable=True),
        sa.Column("actor", sa.String(length=320), nullable=True),
        sa.Column("note", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["generation_id"], ["generations.id"]),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("generation_id", "kind"),
    )
    op.create_index("ix_ledger_entries_generation_id", "ledger_entries", ["generation_id"])
    op.create_index("ix_ledger_entries_organization_id", "ledger_entries", ["organization_id"])

    with op.batch_alter_table("organizations") as batch_op:
        batch_op.add_column(
            sa.Column("balance", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("reserved", sa.BigInteger(), nullable=False, server_default="0")
        )

    # Carry every float balance over as micro-credits, with the grant that explains it.
    connection = op.get_bind()
    organizations = sa.table(
        "organizations",
        sa.column("id", sa.String),
        sa.column("credits", sa.Float),
        sa.column("balance", sa.BigInteger),
    )
    now = datetime.now(UTC)
    for org_id, credits in connection.execute(
        sa.select(organizations.c.id, organizations.c.credits)
    ).all():
        micros = round((credits or 0.0) * MICROS_PER_CREDIT)
        if micros <= 0:
            continue
        connection.execute(
            organizations.update().where(organizations.c.id == org_id).values(balance=micros)
        )
        connection.execute(
            ledger.insert().values(
                organization_id=org_id,
                kind="grant",
                amount=micros,
                balance_after=micros,
                note="balance carried over by migration 0002",
                created_at=now,
            )
        )

    with op.batch_alter_table("organizations") as batch_op:
        batch_op.alter_column("balance", server_default=None)
        batch_op.alter_column("reserved", server_default=None)
        batch_op.drop_column("credits")


def downgrade() -> None:
    with op.batch_alter_table("organizations") as batch_op:
        batch_op.add_column(sa.Column("credits", sa.Float(), nullable=False, server_default="0"))
    organizations = sa.table(
        "organizations",
        sa.column("credits", sa.Float),
        sa.column("balance", sa.BigInteger),
        sa.column("reserved", sa.BigInteger),
    )
    op.get_bind().execute(
        organizations.update().values(
            credits=(organizations.c.balance + organizations.c.reserved) / MICROS_PER_CREDIT
        )
    )
    with op.batch_alter_table("organizations") as batch_op:
        batch_op.alter_column("credits", server_default=None)
        batch_op.drop_column("reserved")
        batch_op.drop_column("balance")
    op.drop_index("ix_ledger_entries_organization_id", table_name="ledger_entries")
    op.drop_index("ix_ledger_entries_generation_id", table_name="ledger_entries")
    op.drop_table("ledger_entries")
    op.drop_index("ix_generations_status", table_name="generations")
    op.drop_index("ix_generations_organization_id", table_name="generations")
    op.drop_table("generations")
