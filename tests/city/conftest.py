"""City fixtures: private Mosquitto processes (centre, station servers) on free loopback ports with their
own directories, a 3-node NATS cluster, and a PostgreSQL schema of their own; every process a test
starts, it stops. The helpers the tests share are in citytools.py."""

from __future__ import annotations

import gc
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from faregate.city.centre import POSTGRES_URL
from faregate.city.cluster import NatsCluster
from faregate.city.station import MOSQUITTO
from tests.backend.conftest import require_service
from tests.city.citytools import PG, require_nats
from tests.city.stationtools import Station
from tests.gate.brokers import require

# nats-py 2.16, reconnecting while a killed node's cluster elects, can drop a half-made connection's
# StreamWriter without closing it (its reconnect loop opens the next transport over the last one after a
# handshake timed out); the socket is closed when it is collected, and Python reports the writer as an
# unraisable ResourceWarning, which `filterwarnings = error` would fail whichever test it lands in. The
# city tests (the only ones with nats-py connections across node kills) collect at their own teardown,
# with that one report ignored.
NATS_PY_DROPPED_WRITER = ("ignore:Exception ignored in. <function StreamWriter.__del__"
                          ":pytest.PytestUnraisableExceptionWarning")


CITY_TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent == CITY_TESTS:
            item.add_marker(pytest.mark.filterwarnings(NATS_PY_DROPPED_WRITER))


@pytest.fixture(autouse=True)
def collect_dropped_writers() -> Iterator[None]:
    yield
    gc.collect()  # here, under the filter above, not in a later test elsewhere


@pytest.fixture
def mosquitto_tools() -> None:
    tools = Path(MOSQUITTO).exists() and bool(shutil.which("mosquitto_passwd"))
    require("mosquitto and mosquitto_passwd", tools)


@pytest.fixture
def postgres_url() -> str:
    require_service("PostgreSQL", 5432)
    return POSTGRES_URL


@pytest.fixture
def city_prefix() -> Iterator[str]:
    yield f"city{uuid.uuid4().hex[:8]}"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    require_nats()
    with NatsCluster(tmp_path / "nats") as running:
        yield running


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    require_service("PostgreSQL", 5432)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(PG)
    try:
        await connection.execute(f"CREATE SCHEMA {schema}")
        yield schema
    finally:
        await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await connection.close()


@pytest.fixture
def station(tmp_path: Path, mosquitto_tools: None, cluster: NatsCluster,
            city_prefix: str) -> Iterator[Station]:
    """A station server with a relay account (tests/city/stationtools.py), started and stopped."""
    server = Station(tmp_path / "station", city_prefix, cluster)
    server.broker.start()
    try:
        yield server
    finally:
        server.broker.stop()
