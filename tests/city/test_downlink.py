"""The deny-list downlink through station servers: blocks reach every gate, a gate back from a long
absence catches up with one net delta, and a forgery sent down the bridges is refused by every gate."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

import fare_core
from backend.db import make_engine, make_sessionmaker
from backend.distribution import Distributor
from backend.publisher import Publisher
from faregate.city.centre import database, ingest_values
from faregate.city.citygates import CityGate, run_gates
from faregate.city.downlink import answer_denylist_request, list_figures, net_change
from faregate.city.station import run_city
from faregate.simgate import SimUplink
from protocol.mqtt import (
    DEVELOPMENT_PUBLIC_KEY,
    DEVELOPMENT_SIGNING_SEED,
    DEVELOPMENT_UPLINK_MASTER_KEY,
    DenyListDeltaMessage,
    Signer,
    SnapshotRequest,
    Topics,
    Verifier,
    derive_gate_key,
    encode,
)
from protocol.mqtt.auth import mac_valid
from tests.city.citytools import until

pytestmark = [pytest.mark.mosquitto]


def test_net_change_turns_the_list_at_one_version_into_the_list_at_another() -> None:
    rng = random.Random(5)
    lists = {0: set[int]()}
    history: list[list[int | None]] = []  # card, added, removed
    for version in range(1, 60):
        listed = set(lists[version - 1])
        for _ in range(rng.randint(1, 3)):
            card = rng.randint(1, 25)
            if card in listed:
                listed.discard(card)
                next(row for row in history if row[0] == card and row[2] is None)[2] = version
            else:
                listed.add(card)
                history.append([card, version, None])
        lists[version] = listed
    rows = [(int(c), int(a), r) for c, a, r in history]  # type: ignore[arg-type]
    for have in (0, 1, 17, 58):
        change = net_change([row for row in rows if row[1] > have or (row[2] or 0) > have], have, 59, "x")
        assert (lists[have] | set(change.add)) - set(change.remove) == lists[59]
        assert not set(change.add) & lists[have] and set(change.remove) <= lists[have]
    with pytest.raises(ValueError):
        net_change(rows, 60, 59, "x")


def test_a_week_of_changes_costs_a_gate_far_less_than_the_whole_list() -> None:
    figures = list_figures(phones=200_000, changed=2_000, gates=2000, stations=20)
    assert figures["snapshot_binary_bytes"] >= 8 * 200_000  # the whole list, every gate
    assert figures["week_delta_bytes"] * 20 < figures["snapshot_binary_bytes"]


def test_the_fan_out_figures_are_the_real_messages_times_their_receivers() -> None:
    """Against sizes computed here: fare_core's binary snapshot of as many ids, and a delta of as many
    changes signed by the development key, each times 30 gates and 3 stations."""
    figures = list_figures(phones=1_000, changed=10, gates=30, stations=3)
    snapshot = len(fare_core.DenyList(range(1, 1_001), version=1).to_bytes())
    old = fare_core.DenyList(range(1, 1_001), version=1)
    change = old.diff(fare_core.DenyList([*range(6, 1_001), *range(2_001, 2_006)], version=2))
    stamped = datetime(2026, 1, 5, 8, 0, 0, 123_456, tzinfo=UTC)
    delta = DenyListDeltaMessage(version=2, base_version=1, add=list(change.add), remove=list(change.remove),
                                 checksum=change.checksum, time=stamped)
    signed = len(encode(Signer(DEVELOPMENT_SIGNING_SEED).sign(delta)))
    # list_figures stamps its delta now(): at a whole second the wire time has no ".ffffff"
    assert figures["week_delta_bytes"] in (signed, signed - len(".123456"))
    delta_bytes = figures["week_delta_bytes"]
    assert figures["snapshot_binary_bytes"] == snapshot
    assert figures["snapshot_to_every_gate_bytes"] == snapshot * 30
    assert figures["snapshot_to_every_station_bytes"] == snapshot * 3
    assert figures["delta_to_every_gate_bytes"] == delta_bytes * 30
    assert figures["delta_to_every_station_bytes"] == delta_bytes * 3


class HttpOnlyList(Distributor):
    """A deny-list past MQTT sizes (over protocol.mqtt.MAX_LIST_ITEMS): no retained MQTT snapshot."""

    async def publish_denylist_snapshot(self, denylist: object = None) -> None:
        return None


@pytest.mark.postgres
async def test_blocks_reach_every_gate_and_one_back_from_a_long_absence_catches_up_with_one_delta(
    tmp_path: Path, mosquitto_tools: None, postgres_url: str, city_prefix: str
) -> None:
    stations = {31: list(range(1, 41)), 32: list(range(1, 41))}
    topics = Topics(city_prefix)
    verifier = Verifier([DEVELOPMENT_PUBLIC_KEY])
    with run_city(tmp_path, city_prefix, stations) as city:
        values = ingest_values(postgres_url, city.centre_url, city_prefix)
        async with database(values) as settings:
            engine = make_engine(settings)
            publisher = Publisher(settings, client_id=f"operator-{uuid.uuid4().hex[:6]}")
            publisher.start()
            distributor = HttpOnlyList(make_sessionmaker(engine), publisher)
            control = SimUplink(city.centre_url, topics, version="5", subscribe=[topics.request("+")])
            control.start()
            gates = [CityGate(sid, no, host="127.0.0.1", port=city.stations[sid].port,
                              password=city.stations[sid].passwords[f"{sid}-{no}"], topics=topics,
                              verifier=verifier) for sid, nos in stations.items() for no in nos]
            away, online = gates[0], gates[1:]
            stop, stop_away = asyncio.Event(), asyncio.Event()
            running = asyncio.create_task(run_gates(online, stop))
            running_away = asyncio.create_task(away.run(stop_away))
            try:
                control.wait_ready()
                await until(lambda: all(g.connected.is_set() for g in gates), 20, "gates connected")
                cards = [f"{0xF000 + n:016x}" for n in range(8)]
                await distributor.change_denylist(cards[:2], [], "stolen")  # version 1
                await distributor.change_denylist(cards[2:3], [], "stolen")  # version 2
                await until(lambda: all(g.denylist.version == 2 for g in gates), 10, "versions 1-2 at all")

                stop_away.set()  # a gate goes away for a long while ...
                await running_away
                await distributor.change_denylist(cards[3:6], [], "stolen")  # 3
                await distributor.change_denylist([], cards[:1], "found")  # 4
                await distributor.change_denylist(cards[6:7], [], "stolen")  # 5
                await distributor.change_denylist([], cards[6:7], "found")  # 6
                await until(lambda: all(g.denylist.version == 6 for g in online), 10, "versions 3-6 online")
                assert away.denylist.version == 2

                stop_away = asyncio.Event()  # ... and comes back holding version 2
                running_away = asyncio.create_task(away.run(stop_away))
                await until(away.connected.is_set, 10, "the gate back")
                called = time.monotonic()
                await distributor.change_denylist(cards[7:8], [], "stolen")  # 7: a delta on base 6
                await until(lambda: all(7 in g.applied for g in online), 10, "block 7 at every online gate")
                slowest = max(g.applied[7] for g in online) - called
                assert slowest > 0

                # the gate back cannot apply 6 -> 7 and asks (MACed); the control plane answers with
                # the net change 2 -> 7 instead of the whole list
                await until(lambda: away.snapshot_requests == 1, 10, "the gate's request")
                await until(lambda: bool(control.messages(topics.request(away.id))), 10, "request at centre")
                request = SnapshotRequest.model_validate_json(control.messages(topics.request(away.id))[0])
                assert mac_valid(request, [derive_gate_key(DEVELOPMENT_UPLINK_MASTER_KEY, away.id)])
                assert request.have_version == 2
                assert await answer_denylist_request(distributor, request.have_version) == "delta"
                await until(lambda: away.denylist.version == 7, 10, "the gate caught up")
                current = await distributor.snapshot()
                assert away.denylist.checksum == current.checksum
                assert sorted(away.denylist.ids()) == sorted(int(c, 16) for c in cards[1:6] + cards[7:8])
                # the gates already current ignored the catch-up delta: no request, nothing refused
                assert sum(g.snapshot_requests for g in online) == 0
                assert sum(g.refused for g in gates) == 0
                assert all(g.denylist.checksum == current.checksum for g in online)
            finally:
                stop.set()
                stop_away.set()
                await asyncio.gather(running, running_away)
                control.close()
                await publisher.aclose()
                await engine.dispose()


@pytest.mark.security
async def test_a_forged_block_sent_down_the_bridges_is_refused_by_every_gate(
    tmp_path: Path, mosquitto_tools: None, city_prefix: str
) -> None:
    """Whoever publishes on the centre (or a station server) cannot block or unblock a phone: every
    gate behind every station refuses an unsigned delta and one signed by another key, and still
    applies the genuine one that follows."""
    stations = {41: [1, 2, 3], 42: [1, 2]}
    topics = Topics(city_prefix)
    with run_city(tmp_path, city_prefix, stations) as city:
        gates = [CityGate(sid, no, host="127.0.0.1", port=city.stations[sid].port,
                          password=city.stations[sid].passwords[f"{sid}-{no}"], topics=topics,
                          verifier=Verifier([DEVELOPMENT_PUBLIC_KEY])) for sid, nos in stations.items()
                 for no in nos]
        centre = SimUplink(city.centre_url, topics, version="5", subscribe=[])
        stop = asyncio.Event()
        running = asyncio.create_task(run_gates(gates, stop))
        try:
            centre.start()
            centre.wait_ready()
            await until(lambda: all(g.connected.is_set() for g in gates), 10, "gates connected")
            target = fare_core.DenyList([0xBAD], version=1)
            change = fare_core.DenyList([], version=0).diff(target)
            delta = DenyListDeltaMessage(version=1, base_version=0, add=list(change.add), remove=[],
                                         checksum=change.checksum, time=datetime.now(UTC))
            stranger = Signer(bytes(range(32)))
            for forged in (delta, stranger.sign(delta)):
                await asyncio.to_thread(centre.publish, topics.denylist_delta, encode(forged))
            await until(lambda: all(g.refused == 2 for g in gates), 10, "both forgeries refused everywhere")
            assert all(g.denylist.version == 0 and 0xBAD not in g.denylist for g in gates)
            genuine = Signer(DEVELOPMENT_SIGNING_SEED).sign(delta)
            await asyncio.to_thread(centre.publish, topics.denylist_delta, encode(genuine))
            await until(lambda: all(0xBAD in g.denylist for g in gates), 10, "the genuine block applied")
            assert all(g.snapshot_requests == 0 for g in gates)
        finally:
            stop.set()
            await running
            centre.close()
