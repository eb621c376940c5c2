"""Backend fixtures: every database (SQLite, PostgreSQL) and every broker (amqtt, Mosquitto), real ones.

PostgreSQL tests get a schema of their own (dropped after), Mosquitto tests a topic prefix of their own,
so concurrent runs on one machine never see each other. When CI=true a missing service fails the test
instead of skipping it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backend.broker import embedded_broker
from backend.config import Settings
from backend.db import make_engine, make_sessionmaker
from backend.migrate import upgrade
from fare_core.reasons import Direction, GateMode, Reason
from protocol.mqtt import DEVELOPMENT_UPLINK_MASTER_KEY, TapMessage, derive_gate_key, tap_id, with_mac
from tests.gate.brokers import MOSQUITTO, ShippedMosquitto

POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
MOSQUITTO_URL = "mqtt://127.0.0.1:1883"


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def require_service(name: str, port: int) -> None:
    if not _port_open(port):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not running on 127.0.0.1:{port} and CI=true")
        pytest.skip(f"{name} is not running on 127.0.0.1:{port}")


@dataclass
class Database:
    name: str
    url: str
    schema: str | None


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        yield Database("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'faregate.db'}", None)
        return
    require_service("PostgreSQL", 5432)
    import asyncpg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
    try:
        await connection.execute(f"CREATE SCHEMA {schema}")
        yield Database("postgres", POSTGRES_URL, schema)
    finally:
        await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await connection.close()


@dataclass
class BrokerInfo:
    name: str
    url: str
    version: str  # "5" or "3.1.1"
    group: str  # shared subscription group ("" = plain)


# Test modules whose `broker` also takes the third variant, "mosquitto-shipped": a second Mosquitto
# started once per session from the shipped configuration (backend/deploy: login, per-gate ACL,
# persistence, queue limits), logged in as the backend account. Only the MQTT suites: the others test
# the API or the database and gain nothing from a third broker.
SHIPPED_SUITES = {"test_ingest", "test_simgate"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "broker" not in metafunc.fixturenames:
        return
    variants: list[Any] = [pytest.param("mosquitto", marks=pytest.mark.mosquitto)]
    if metafunc.definition.get_closest_marker("keeps_sessions") is None:
        variants.insert(0, "amqtt")  # amqtt drops a session's in-flight QoS 1 messages on a disconnect
    if metafunc.module.__name__.rsplit(".", 1)[-1] in SHIPPED_SUITES:
        variants.append(pytest.param("mosquitto-shipped", marks=pytest.mark.mosquitto))
    metafunc.parametrize("broker", variants, indirect=True)


@pytest.fixture(scope="session")
def shipped_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShippedMosquitto]:
    """The shipped configuration on a free port for the whole session (stopped at its end)."""
    tools = os.path.exists(MOSQUITTO) and shutil.which("mosquitto_passwd") is not None
    if not tools:
        if os.environ.get("CI") == "true":
            pytest.fail("mosquitto or mosquitto_passwd is not installed and CI=true")
        pytest.skip("mosquitto or mosquitto_passwd is not installed")
    broker = ShippedMosquitto(["12-3", "12-4"])
    broker.start_blocking()
    try:
        yield broker
    finally:
        broker.stop_blocking()
        broker.cleanup()


@pytest.fixture
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[BrokerInfo]:
    if request.param == "mosquitto-shipped":
        shipped = request.getfixturevalue("shipped_mosquitto")
        yield BrokerInfo("mosquitto-shipped", shipped.url, "5", f"g{uuid.uuid4().hex[:8]}")
        return
    if request.param == "amqtt":
        # open: MQTT behaviour is tested here; tests/backend/test_broker_auth.py attacks the login and ACL
        async with embedded_broker(allow_anonymous=True) as url:
            yield BrokerInfo("amqtt", url, "3.1.1", "")
        # amqtt may leave the server side of a just-closed connection to the garbage collector;
        # collect it here, where it is known to be amqtt's, not in whichever test runs next.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        return
    require_service("Mosquitto", 1883)
    yield BrokerInfo("mosquitto", MOSQUITTO_URL, "5", f"g{uuid.uuid4().hex[:8]}")


def make_settings(database: Database, broker: BrokerInfo | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "development",
        "database_url": database.url,
        "database_schema": database.schema,
        "mqtt_prefix": f"test{uuid.uuid4().hex[:10]}",
        "ingest_client_id": f"ingest-{uuid.uuid4().hex[:10]}",
        "ingest_batch_wait_ms": 5,
    }
    if broker is not None:
        values.update(mqtt_url=broker.url, mqtt_version=broker.version, ingest_group=broker.group)
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def migrated(
    database: Database,
) -> AsyncIterator[tuple[Database, AsyncEngine, async_sessionmaker[AsyncSession]]]:
    settings = make_settings(database)
    engine = make_engine(settings)
    await upgrade(engine, settings)
    try:
        yield database, engine, make_sessionmaker(engine)
    finally:
        await engine.dispose()


def make_tap(
    seq: int = 1, *, station_id: int = 12, gate_no: int = 3, card_id: int = 0xDEADBEEF, **fields: Any
) -> TapMessage:
    """A valid tap with plausible numbers and its gate's MAC (development keys); any field can be
    overridden (a `mac` given is kept as given)."""
    values: dict[str, Any] = {
        "tap_id": tap_id(station_id, gate_no, seq),
        "station_id": station_id,
        "gate_no": gate_no,
        "seq": seq,
        "card_id": card_id,
        "time": datetime(2026, 11, 22, 8, 0, seq % 60, tzinfo=UTC),
        "direction": Direction.ENTRY,
        "mode": GateMode.NORMAL,
        "allowed": True,
        "reason": Reason.OK,
        "flags": 0,
        "fare": 0,
        "balance_before": 1000,
        "balance_after": 1000,
        "counter_before": seq,
        "counter_after": seq + 1,
        "wallet_before": "00" * 128,
        "fare_table_version": 1,
        "denylist_version": 0,
        "min_counter": 0,
        "latency_us": 150,
    }
    values.update(fields)
    if "tap_id" not in fields:
        values["tap_id"] = tap_id(values["station_id"], values["gate_no"], values["seq"])
    tap = TapMessage(**values)
    key = derive_gate_key(DEVELOPMENT_UPLINK_MASTER_KEY, tap.gate_id)
    return tap if "mac" in fields else with_mac(tap, key)


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll an (async or sync) predicate until it returns something truthy; fail after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


@pytest.fixture
def unique() -> Iterator[str]:
    yield uuid.uuid4().hex[:10]


def wait_healthy(url: str, process: subprocess.Popen[bytes], limit_s: float = 30.0) -> None:
    """Wait for a backend process started by a test to answer /health (fail if it exits or is late)."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            raise AssertionError("backend did not start")
        time.sleep(0.1)
