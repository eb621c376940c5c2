"""Gate test fixtures: `broker` runs each test on the embedded amqtt and on a private Mosquitto; the
tests named in SHIPPED also on a private Mosquitto with the shipped configuration (login, ACL,
persistence), the way a station's broker runs."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator

import pytest

from .brokers import MOSQUITTO, Amqtt, Broker, PrivateMosquitto, ShippedMosquitto, require

# the gate-to-backend paths through the shipped broker; the rest of the suite is broker behaviour that
# the open Mosquitto covers (and the 30 s outage test would add half a minute per run)
SHIPPED = {
    "test_trips_reach_the_backend_once_and_leave_the_journal",
    "test_gate_sigkilled_mid_traffic_restarts_with_its_journal",
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "broker" not in metafunc.fixturenames:
        return
    variants = ["amqtt", pytest.param("mosquitto", marks=pytest.mark.mosquitto)]
    if metafunc.function.__name__ in SHIPPED:
        variants.append(pytest.param("mosquitto-shipped", marks=pytest.mark.mosquitto))
    metafunc.parametrize("broker", variants, indirect=True)


@pytest.fixture
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    chosen: Broker
    if request.param == "mosquitto":
        require("the mosquitto binary", os.path.exists(MOSQUITTO))
        chosen = PrivateMosquitto()
    elif request.param == "mosquitto-shipped":
        tools = os.path.exists(MOSQUITTO) and shutil.which("mosquitto_passwd") is not None
        require("mosquitto and mosquitto_passwd", tools)
        chosen = ShippedMosquitto()
    else:
        chosen = Amqtt()
    await chosen.start()
    try:
        yield chosen
    finally:
        await chosen.stop()
        if isinstance(chosen, PrivateMosquitto):
            chosen.cleanup()
