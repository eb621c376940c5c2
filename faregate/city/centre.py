"""The centre's side for the city tests and bench: a database schema, ingest workers, the count.

Today's centre is one Mosquitto and PostgreSQL with the existing ingest worker (backend.ingest.worker)
in processes of its own. This is the hook where a clustered broker and
several workers plug in (faregate/city/cluster.py): `CentreBackend` needs only the broker URL the
stations bridge to and the number of workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from backend.config import Settings

POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


async def _schema(settings: Settings, statement: str) -> None:
    import asyncpg

    dsn = settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def _prepare_database(settings: Settings) -> None:
    from backend.db import make_engine
    from backend.migrate import upgrade

    if settings.database_schema:
        await _schema(settings, f"CREATE SCHEMA {settings.database_schema}")
    engine = make_engine(settings)
    await upgrade(engine, settings)
    await engine.dispose()


async def _drop_schema(settings: Settings) -> None:
    if settings.database_schema:
        await _schema(settings, f"DROP SCHEMA IF EXISTS {settings.database_schema} CASCADE")


async def _count(settings: Settings, gate_ids: list[str]) -> tuple[int, int]:
    from sqlalchemy import distinct, func, select

    from backend.db import make_engine
    from backend.tables import TapRow

    engine = make_engine(settings)
    try:
        async with engine.connect() as connection:
            rows, unique = (await connection.execute(
                select(func.count(), func.count(distinct(TapRow.tap_id))).where(TapRow.gate_id.in_(gate_ids))
            )).one()
    finally:
        await engine.dispose()
    return int(rows), int(unique)


def _ingest_process(values: dict[str, Any], stop: Any, ready: Any) -> None:
    """Child process: one ingest worker (backend.ingest.worker, as `faregate backend --no-api` runs it)."""
    from backend.db import make_engine, make_sessionmaker
    from backend.ingest.worker import IngestWorker

    settings = Settings(**values)

    async def main() -> None:
        engine = make_engine(settings)
        worker = IngestWorker(settings, make_sessionmaker(engine))
        stopped = asyncio.Event()
        runner = asyncio.create_task(worker.run(stopped))
        await worker.connected.wait()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        stopped.set()
        await runner
        await engine.dispose()

    asyncio.run(main())


@contextlib.contextmanager
def _ingest_workers(values: dict[str, Any], count: int) -> Iterator[None]:
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    workers = []
    try:
        for number in range(count):
            ready = ctx.Event()
            own = {**values, "ingest_client_id": f"{values['ingest_client_id']}-{number}"}
            process = ctx.Process(target=_ingest_process, args=(own, stop, ready))
            process.start()
            workers.append((process, ready))
        for _, ready in workers:
            if not ready.wait(60):
                raise RuntimeError("ingest worker did not start")
        yield
    finally:
        stop.set()
        for process, _ in workers:
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join(5)


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
async def database(values: dict[str, Any]) -> AsyncIterator[Settings]:
    """A fresh migrated schema for `values`, dropped on the way out (no ingest workers)."""
    settings = Settings(**values)
    try:
        await _prepare_database(settings)
        yield settings
    finally:
        await _drop_schema(settings)


@contextlib.asynccontextmanager
async def run_centre(values: dict[str, Any], workers: int = 1) -> AsyncIterator[CentreBackend]:
    """Migrate a fresh schema, start the ingest worker processes; stop them and drop the schema on the
    way out. (Starting the workers blocks the event loop for the seconds they take to subscribe.)"""
    settings = Settings(**values)
    try:
        await _prepare_database(settings)
        with _ingest_workers(values, workers):
            yield CentreBackend(values, workers)
    finally:
        await _drop_schema(settings)
