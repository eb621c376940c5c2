"""The centre's side for the city tests and bench: a database schema, ingest workers, the count.

Today's centre is one Mosquitto and PostgreSQL with the existing ingest worker processes
(`faregate.bench.ingest` starts them the same way). This is the hook where a clustered broker and
several workers plug in (faregate/city/cluster.py): `CentreBackend` needs only the broker URL the
stations bridge to and the number of workers.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from backend.config import Settings
from faregate.bench.ingest import _count, _drop_schema, _ingest_workers, _prepare_database

POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def ingest_values(
    database_url: str, mqtt_url: str, prefix: str, *, username: str | None = None,
    password: str | None = None, batch_wait_ms: int = 20,
) -> dict[str, Any]:
    """Settings for the centre's ingest workers and publisher: a fresh PostgreSQL schema (or the given
    SQLite file), MQTT v5 with the shared subscription, no reconciliation (taps are synthetic)."""
    return {
        "environment": "development",
        "database_url": database_url,
        "database_schema": f"city_{uuid.uuid4().hex[:10]}" if database_url.startswith("postgresql") else None,
        "mqtt_url": mqtt_url,
        "mqtt_version": "5",
        "mqtt_username": username,
        "mqtt_password": password,
        "mqtt_prefix": prefix,
        "ingest_group": "city",
        "ingest_client_id": f"city-ingest-{uuid.uuid4().hex[:8]}",
        "ingest_batch_size": 2000,
        "ingest_batch_wait_ms": batch_wait_ms,
        "reconcile": False,
    }


@dataclass
class CentreBackend:
    """The database prepared and `workers` ingest processes subscribed; counts what was stored."""

    values: dict[str, Any]
    workers: int = 1

    @property
    def settings(self) -> Settings:
        return Settings(**self.values)

    async def count(self, gate_ids: list[str]) -> tuple[int, int]:
        """(rows, distinct tap ids) stored for these gates."""
        return await _count(self.settings, gate_ids)


@contextlib.asynccontextmanager
async def run_centre(values: dict[str, Any], workers: int = 1) -> AsyncIterator[CentreBackend]:
    """Migrate a fresh schema, start the ingest worker processes; stop them and drop the schema on the
    way out. (Starting the workers blocks the event loop for the seconds they take to subscribe.)"""
    settings = Settings(**values)
    ctx = multiprocessing.get_context("spawn")
    try:
        await _prepare_database(settings)
        stop = ctx.Event()
        with _ingest_workers(ctx, values, workers, stop):
            yield CentreBackend(values, workers)
    finally:
        await _drop_schema(settings)
