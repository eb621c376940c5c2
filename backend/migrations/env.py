"""Alembic environment: runs the migrations on the async engine the backend itself uses."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from backend.config import Settings
from backend.db import make_engine
from backend.tables import Base

config = context.config
target_metadata = Base.metadata


def _settings() -> Settings:
    settings = config.attributes.get("settings")
    return settings if isinstance(settings, Settings) else Settings()


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection, target_metadata=target_metadata, render_as_batch=True, compare_type=True
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = make_engine(_settings())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=_settings().database_url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        asyncio.run(_run_async())
