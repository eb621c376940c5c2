"""City fixtures: private Mosquitto processes (centre, station servers) on free loopback ports with their
own directories, and a PostgreSQL schema of their own; every process a test starts, it stops."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from faregate.city.centre import POSTGRES_URL
from faregate.city.station import MOSQUITTO
from tests.backend.conftest import require_service
from tests.gate.brokers import require


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
