"""The Alembic history builds exactly the schema tables.py declares, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from backend.tables import Base


async def test_migrations_match_the_models(migrated: Any) -> None:
    _database, engine, _sessions = migrated
    async with engine.connect() as connection:
        drift = await connection.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
        )
    assert drift == []
