"""A failed generation's error name gets a column of its own (it was "name: message").

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 06:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

generations = sa.table(
    "generations",
    sa.column("organization_id", sa.String),
    sa.column("id", sa.String),
    sa.column("error_name", sa.String),
    sa.column("error", sa.String),
)


def upgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("error_name", sa.String(length=64), nullable=True))
    # Split the "name: message" strings that older versions wrote.
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(generations.c.organization_id, generations.c.id, generations.c.error).where(
            generations.c.error.is_not(None)
        )
    ).all()
    for organization_id, generation_id, error in rows:
        name, separator, message = error.partition(": ")
        if not separator or not name.isidentifier():
            name, message = "server_error", error
        connection.execute(
            generations.update()
            .where(
                generations.c.organization_id == organization_id, generations.c.id == generation_id
            )
            .values(error_name=name[:64], error=message)
        )


def downgrade() -> None:
    connection = op.get_bind()
    connection.execute(
        generations.update()
        .where(generations.c.error_name.is_not(None))
        .values(
            error=sa.func.substr(
                generations.c.error_name + ": " + sa.func.coalesce(generations.c.error, ""),
                1,
                2000,
            )
        )
    )
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("error_name")
