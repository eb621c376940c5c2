"""Fixtures for the simulator tests: real pseudo-terminals, and a guard that fails any test leaving
threads or file descriptors behind (the pymodbus habit)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import serial

from firmware_sim.client import SerialClient
from firmware_sim.config import DeviceConfig
from firmware_sim.population import Phone, Population
from firmware_sim.sim import Sim

ALICE = 0x00000000A11CE001  # 10.00 yuan
BOB = 0x00000000B0B00002  # 5.00 yuan
CAROL = 0x00000000CA201003  # slow phone (slowness 3)
DAVE = 0x00000000DA7E0004  # flaky writes


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """Every thread and file descriptor a test opens, it closes."""
    threads_before = set(threading.enumerate())
    fds_before = _open_fds()
    yield
    deadline = time.monotonic() + 2.0
    while True:
        extra_threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        extra_fds = _open_fds() - fds_before
        if (not extra_threads and not extra_fds) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not extra_threads, f"threads left running: {extra_threads}"
    # a descriptor number may be reused, so only growth counts
    assert len(_open_fds()) <= len(fds_before), f"file descriptors left open: {sorted(extra_fds)}"


@pytest.fixture
def population() -> Population:
    return Population([
        Phone(ALICE, balance=1000),
        Phone(BOB, category=1, balance=500),
        Phone(CAROL, balance=800, slowness=3.0),
        Phone(DAVE, balance=900, flaky_write=True),
    ])


@pytest.fixture
def make_sim(population: Population) -> Iterator[Callable[..., Sim]]:
    sims: list[Sim] = []

    def make(config: DeviceConfig | None = None, **kwargs: object) -> Sim:
        kwargs.setdefault("population", population)
        sim = Sim(config, **kwargs).start()  # type: ignore[arg-type]
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        sim.close()


@pytest.fixture
def sim(make_sim: Callable[..., Sim]) -> Sim:
    return make_sim()


@pytest.fixture
def port(sim: Sim) -> Iterator[serial.SerialBase]:
    handle = serial.serial_for_url(sim.url(0), baudrate=115200, timeout=0.05)
    yield handle
    handle.close()


@pytest.fixture
def client(port: serial.SerialBase) -> SerialClient:
    return SerialClient(port)
