"""Gate test fixtures: `broker` runs each test on the embedded amqtt and on a private Mosquitto."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from .brokers import MOSQUITTO, Amqtt, Broker, PrivateMosquitto, require


@pytest.fixture(params=["amqtt", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    if request.param == "mosquitto":
        require("the mosquitto binary", os.path.exists(MOSQUITTO))
        chosen: Broker = PrivateMosquitto()
    else:
        chosen = Amqtt()
    await chosen.start()
    try:
        yield chosen
    finally:
        await chosen.stop()
        if isinstance(chosen, PrivateMosquitto):
            chosen.cleanup()
