"""pytest-benchmark: one deny-list block from the centre to every gate, through station servers beside
the same number of gates logged in to the centre directly (today's single broker), in the same run;
and a gate catching up on a 10-million-phone list: the week's net delta applied beside the whole
binary snapshot loaded.

Run: python3 -m pytest benchmarks/test_city_bench.py --benchmark-only
Rows: "via_stations" = 200 gates on 4 station servers, "direct" = 200 gates on a centre of their own,
both groups connected at once, each fed its own signed deltas (one a round; a round ends when the last
gate of the group has verified and applied it); "week_delta" / "snapshot_load" on a list of
10,000,000 phones (a week: 70,000 ids changed). Every gate is a faregate.city.citygates.CityGate: its
own connection and login, the backend's signature checked before anything is applied. The figures are
the simulating process's as much as the brokers' (200 gates share one core here); compare rows of one
run: the machine is shared. Needs mosquitto and mosquitto_passwd.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import fare_core
from faregate.city.citygates import CityGate, run_gates
from faregate.city.station import MOSQUITTO, run_city
from faregate.simgate import SimUplink
from protocol.mqtt import (
    DEVELOPMENT_PUBLIC_KEY,
    DEVELOPMENT_SIGNING_SEED,
    DenyListDeltaMessage,
    Signer,
    Topics,
    Verifier,
    encode,
    gate_id,
)

PREFIX = "citybench"  # + "s" (behind stations) or "d" (direct)
STATIONS = {51: range(1, 51), 52: range(1, 51), 53: range(1, 51), 54: range(1, 51)}
DIRECT = {61: range(1, 101), 62: range(1, 101)}


class Fleet:
    """Two cities on one event loop in a thread of their own: gates behind station servers, and the same
    number on a centre of their own (so a delta sent to one group reaches only that group)."""

    def __init__(self, directory: Path) -> None:
        direct = [gate_id(s, no) for s, nos in DIRECT.items() for no in nos]
        self._cities = [
            run_city(directory / "stations", PREFIX + "s", {s: list(nos) for s, nos in STATIONS.items()}),
            run_city(directory / "direct", PREFIX + "d", {}, direct_gates=direct),
        ]
        stations, centre = (c.__enter__() for c in self._cities)
        verifier = Verifier([DEVELOPMENT_PUBLIC_KEY])
        self.topics = {"via_stations": Topics(PREFIX + "s"), "direct": Topics(PREFIX + "d")}
        self.groups: dict[str, list[CityGate]] = {
            "via_stations": [CityGate(s, no, host="127.0.0.1", port=stations.stations[s].port,
                                      password=stations.stations[s].passwords[gate_id(s, no)],
                                      topics=self.topics["via_stations"], verifier=verifier)
                             for s, nos in STATIONS.items() for no in nos],
            "direct": [CityGate(s, no, host="127.0.0.1", port=centre.centre.files.port,
                                password=centre.centre.files.passwords[gate_id(s, no)],
                                topics=self.topics["direct"], verifier=verifier)
                       for s, nos in DIRECT.items() for no in nos],
        }
        urls = {"via_stations": stations.centre_url, "direct": centre.centre_url}
        self.operators = {group: SimUplink(url, self.topics[group], version="5", subscribe=[])
                          for group, url in urls.items()}
        for operator in self.operators.values():
            operator.start()
            operator.wait_ready()
        self.signer = Signer(DEVELOPMENT_SIGNING_SEED)
        self.denylists = {group: fare_core.DenyList([], version=0) for group in self.groups}
        self.loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        gates = [g for group in self.groups.values() for g in group]
        self._running = self.loop.create_task(run_gates(gates, self._stop))
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not all(g.connected.is_set() for g in gates):
            assert time.monotonic() < deadline, "gates not connected"
            time.sleep(0.05)

    def block(self, group: str) -> None:
        """One signed delta (a new phone blocked) from the centre, until every gate of `group` applied it."""
        held = self.denylists[group]
        new = fare_core.DenyList([*held.ids(), random.getrandbits(64)], version=held.version + 1)
        change = held.diff(new)
        self.denylists[group] = new
        message = self.signer.sign(DenyListDeltaMessage(
            version=change.version, base_version=change.base_version, add=list(change.add), remove=[],
            checksum=change.checksum, time=datetime.now(UTC)))
        self.operators[group].publish(self.topics[group].denylist_delta, encode(message))
        gates = self.groups[group]
        while not all(g.denylist.version >= change.version for g in gates):
            time.sleep(0.001)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        deadline = time.monotonic() + 15
        while not self._running.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
        for operator in self.operators.values():
            operator.close()
        for city in reversed(self._cities):
            city.__exit__(None, None, None)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if not (Path(MOSQUITTO).exists() and shutil.which("mosquitto_passwd")):
        pytest.skip("mosquitto is not installed")
    fleet = Fleet(tmp_path_factory.mktemp("city"))
    yield fleet
    fleet.close()


@pytest.mark.parametrize("group", ["via_stations", "direct"])
def test_block_to_every_gate(benchmark: Any, fleet: Fleet, group: str) -> None:
    benchmark.pedantic(fleet.block, args=(group,), rounds=10, warmup_rounds=1)
    assert all(g.refused == 0 and g.snapshot_requests == 0 for g in fleet.groups[group])


@pytest.fixture(scope="module")
def ten_million() -> tuple[bytes, bytes]:
    """The 10,000,000-phone list (fare_core's binary snapshot) and a week's signed net delta (JSON)."""
    rng = random.Random(16)
    ids = list({rng.getrandbits(64) for _ in range(10_000_000)})
    old = fare_core.DenyList(ids, version=1)
    new = fare_core.DenyList(ids[35_000:] + [rng.getrandbits(64) for _ in range(35_000)], version=2)
    change = old.diff(new)
    message = Signer(DEVELOPMENT_SIGNING_SEED).sign(DenyListDeltaMessage(
        version=2, base_version=1, add=list(change.add), remove=list(change.remove), checksum=change.checksum,
        time=datetime.now(UTC)))
    return old.to_bytes(), encode(message)


def test_week_delta(benchmark: Any, ten_million: tuple[bytes, bytes]) -> None:
    """What a gate back from a week does with the net delta: parse, verify the signature, apply."""
    binary, payload = ten_million
    verifier = Verifier([DEVELOPMENT_PUBLIC_KEY])

    def held() -> tuple[tuple[Any], dict[str, Any]]:
        return (fare_core.DenyList.from_bytes(binary),), {}

    def catch_up(denylist: Any) -> None:
        message = DenyListDeltaMessage.model_validate_json(payload)
        verifier.check(message)
        denylist.apply_delta(fare_core.DenyListDelta(
            version=message.version, base_version=message.base_version, add=tuple(message.add),
            remove=tuple(message.remove), checksum=message.checksum))

    benchmark.pedantic(catch_up, setup=held, rounds=5)


def test_snapshot_load(benchmark: Any, ten_million: tuple[bytes, bytes]) -> None:
    """The other way back: load the whole binary snapshot (80 MB to move first)."""
    binary, _ = ten_million
    benchmark.pedantic(fare_core.DenyList.from_bytes, args=(binary,), rounds=5)
