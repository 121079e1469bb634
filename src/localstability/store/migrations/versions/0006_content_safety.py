"""Content safety: an organization's own prompt filter mode, and what the output filter found
in a generation's images.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 01:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("organizations") as batch:
        batch.add_column(sa.Column("prompt_filter", sa.String(length=16), nullable=True))
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("content_filter", _JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("content_filter")
    with op.batch_alter_table("organizations") as batch:
        batch.drop_column("prompt_filter")
