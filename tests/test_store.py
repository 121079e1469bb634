"""The database schema comes from Alembic migrations, run by themselves at start."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from localstability.store.db import Database
from localstability.store.models import Base


def test_migrations_create_the_schema_and_match_the_models(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        tables = set(inspect(database.engine).get_table_names())
        assert {"users", "organizations", "memberships", "api_keys", "alembic_version"} <= tables
        with database.engine.connect() as connection:
            version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
            assert version == "0001"
            # The migrations and the SQLAlchemy models describe the same schema.
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
            assert differences == []
    finally:
        database.dispose()
    # Starting again on the same file is a no-op, not an error.
    Database(f"sqlite:///{tmp_path / 'fresh.db'}").dispose()
