"""A gate back with an old deny-list asks and the backend answers with one net delta to the current
version (backend/catchup.py, backend/control.py::SnapshotRequests), coalesced per version held and
bounded; a list past MQTT's size gets its delta and no MQTT snapshot. On the real brokers (amqtt and
Mosquitto) and databases (SQLite and PostgreSQL), with the Distributor and Publisher the backend runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import pytest

import fare_core
from backend import distribution
from backend.catchup import Answer, catch_up
from backend.config import Settings
from backend.control import SnapshotRequests, handle_control_message
from backend.distribution import Distributor
from backend.ingest.store import RawMessage
from backend.publisher import Publisher
from backend.runtime import serve
from faregate.simgate import development_mac_key
from protocol.mqtt import (
    DenyListDeltaMessage,
    DenyListSnapshotMessage,
    SnapshotRequest,
    Topics,
    UpdateKind,
    encode_with_mac,
)
from tests.backend.conftest import BrokerInfo, make_settings, wait_for

CARDS = [0xC0DE0000 + n for n in range(200)]


@dataclass
class Watcher:
    """What the backend publishes on the deny-list topics (live messages, not retained copies)."""

    deltas: list[DenyListDeltaMessage] = field(default_factory=list)
    snapshots: list[DenyListSnapshotMessage] = field(default_factory=list)
    retained_snapshots: list[DenyListSnapshotMessage] = field(default_factory=list)

    def catch_ups(self, have: int) -> list[DenyListDeltaMessage]:
        return [d for d in self.deltas if d.base_version == have]


@contextlib.asynccontextmanager
async def watching(broker: BrokerInfo, topics: Topics) -> AsyncIterator[Watcher]:
    url = urlsplit(broker.url)
    seen = Watcher()
    host, port = url.hostname or "127.0.0.1", url.port or 1883
    async with aiomqtt.Client(host, port, protocol=protocol(broker)) as client:
        await client.subscribe(topics.denylist_delta, qos=1)
        await client.subscribe(topics.denylist_snapshot, qos=1)

        async def collect() -> None:
            async for message in client.messages:
                payload = bytes(message.payload)
                if str(message.topic) == topics.denylist_delta:
                    seen.deltas.append(DenyListDeltaMessage.model_validate_json(payload))
                elif payload:
                    snapshot = DenyListSnapshotMessage.model_validate_json(payload)
                    (seen.retained_snapshots if message.retain else seen.snapshots).append(snapshot)

        task = asyncio.create_task(collect())
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def protocol(broker: BrokerInfo) -> aiomqtt.ProtocolVersion:
    return aiomqtt.ProtocolVersion.V5 if broker.version == "5" else aiomqtt.ProtocolVersion.V311


def request(topics: Topics, gate_no: int, have: int, kind: UpdateKind = UpdateKind.DENYLIST) -> RawMessage:
    """A gate's MACed request, as the ingest hands it to the control plane."""
    gate = f"12-{gate_no}"
    message = SnapshotRequest(gate_id=gate, kind=kind, have_version=have, time=datetime.now(UTC))
    return RawMessage(topics.request(gate), encode_with_mac(message, development_mac_key(12, gate_no)))


async def history(distributor: Distributor, versions: int) -> dict[int, list[int]]:
    """`versions` deny-list versions: 100 phones blocked at once, then one change a version (a block,
    every third an unblock): the list at each version."""
    lists: dict[int, list[int]] = {0: []}
    listed = list(CARDS[100:])
    await distributor.change_denylist([f"{card:016x}" for card in listed], [], "stolen")
    lists[1] = sorted(listed)
    for version in range(2, versions + 1):
        if version % 3 == 0:
            card = listed.pop(0)
            await distributor.change_denylist([], [f"{card:016x}"], "found")
        else:
            card = CARDS[version]
            listed.append(card)
            await distributor.change_denylist([f"{card:016x}"], [], "stolen")
        lists[version] = sorted(listed)
    return lists


def caught_up(held: list[int], have: int, delta: DenyListDeltaMessage) -> fare_core.DenyList:
    """What a gate holding `held` at version `have` makes of the delta (fare_core, as gate/state.py)."""
    denylist = fare_core.DenyList(held, version=have)
    denylist.apply_delta(fare_core.DenyListDelta(
        version=delta.version, base_version=delta.base_version, add=tuple(delta.add),
        remove=tuple(delta.remove), checksum=delta.checksum))
    return denylist


@contextlib.asynccontextmanager
async def backend(migrated: Any, broker: BrokerInfo) -> AsyncIterator[tuple[Settings, Distributor]]:
    database, _engine, sessions = migrated
    settings = make_settings(database, broker)
    publisher = Publisher(settings)
    try:
        yield settings, Distributor(sessions, publisher)
    finally:
        await publisher.aclose()


async def test_a_gate_at_an_old_version_asks_and_gets_one_delta_to_the_current_list(
    migrated: Any, broker: BrokerInfo
) -> None:
    """Through the backend as it runs (`serve`: the ingest hands the gate's MQTT request to the
    control plane): one delta from the gate's version, whose result has the current checksum."""
    async with backend(migrated, broker) as (settings, distributor):
        topics = distributor.topics
        lists = await history(distributor, 7)
        stop = asyncio.Event()
        async with watching(broker, topics) as seen:
            running = asyncio.create_task(serve(settings, api=False, ingest=True, processor=False, stop=stop,
                                                install_signals=False))
            try:
                await wait_for(lambda: seen.snapshots, 20)  # connected: it republished its state
                url = urlsplit(broker.url)
                async with aiomqtt.Client(url.hostname or "127.0.0.1", url.port or 1883,
                                          protocol=protocol(broker)) as gate:
                    raw = request(topics, 3, 2)
                    await gate.publish(raw.topic, raw.payload, qos=1)
                    await wait_for(lambda: seen.catch_ups(2), 15)
                await asyncio.sleep(1.5)  # nothing else follows
            finally:
                stop.set()
                await asyncio.wait_for(running, 20)
        current = await distributor.snapshot()
        [delta] = seen.catch_ups(2)
        assert delta.version == current.version == 7
        assert delta.sig is not None  # signed by the publisher, as every downlink message
        result = caught_up(lists[2], 2, delta)
        assert result.checksum == current.checksum and sorted(result.ids()) == lists[7]
        assert len(delta.add) + len(delta.remove) < len(current)  # the net change, not the list
        assert len(seen.snapshots) == 1  # the connection's republish only; none for the request


async def test_fifty_gates_at_one_old_version_make_one_delta_publish(
    migrated: Any, broker: BrokerInfo
) -> None:
    async with backend(migrated, broker) as (settings, distributor):
        topics = distributor.topics
        lists = await history(distributor, 6)
        requests = SnapshotRequests(distributor.resend, window_s=2.0)  # as backend/runtime.py wires it
        async with watching(broker, topics) as seen:
            try:
                for gate_no in range(1, 51):
                    await handle_control_message(settings, migrated[2], request(topics, gate_no, 1), requests)
                await wait_for(lambda: seen.catch_ups(1), 10)
                await asyncio.sleep(3.0)  # a window and more: no second publish
            finally:
                await requests.aclose()
        assert len(seen.catch_ups(1)) == 1 and len(seen.deltas) == 1
        assert caught_up(lists[1], 1, seen.deltas[0]).checksum == (await distributor.snapshot()).checksum
        assert seen.snapshots == [] and requests.answers == {Answer.DELTA: 1}
        assert requests.republished[UpdateKind.DENYLIST] == 0


async def test_a_current_gate_causes_nothing_and_an_unknown_version_gets_the_snapshot(
    migrated: Any, broker: BrokerInfo
) -> None:
    async with backend(migrated, broker) as (settings, distributor):
        topics = distributor.topics
        await history(distributor, 4)
        requests = SnapshotRequests(distributor.resend, window_s=2.0)
        async with watching(broker, topics) as seen:
            try:
                await handle_control_message(settings, migrated[2], request(topics, 1, 4), requests)
                await wait_for(lambda: requests.answers[Answer.CURRENT] == 1, 10)
                await asyncio.sleep(1.0)
                assert seen.deltas == [] and seen.snapshots == []  # the current gate: nothing at all
                await handle_control_message(settings, migrated[2], request(topics, 2, 9), requests)  # newer
                await wait_for(lambda: seen.snapshots, 10)
                await asyncio.sleep(1.0)
            finally:
                await requests.aclose()
        [snapshot] = seen.snapshots
        assert snapshot.version == 4 and seen.deltas == []
        assert requests.answers == {Answer.CURRENT: 1, Answer.SNAPSHOT: 1}
        assert requests.republished[UpdateKind.DENYLIST] == 1


class Unpublished(Distributor):
    """Commits versions and publishes nothing (catch_up reads the database only)."""

    async def publish_denylist_delta(self, row: Any, add: list[int], remove: list[int]) -> None:
        return None

    async def publish_denylist_snapshot(self, denylist: Any = None) -> None:
        return None


async def test_a_gate_too_far_behind_gets_the_snapshot_not_a_delta(migrated: Any) -> None:
    """More history rows than the bound since the gate's version: no delta is computed."""
    database, _engine, sessions = migrated
    publisher = Publisher(make_settings(database))  # never connected
    distributor = Unpublished(sessions, publisher)
    for card in CARDS[:12]:
        await distributor.change_denylist([f"{card:016x}"], [], "stolen")
    async with sessions() as session:
        assert (await catch_up(session, 12)) == (Answer.CURRENT, None)
        answer, delta = await catch_up(session, 9)
        assert answer is Answer.DELTA and delta is not None and len(delta.add) == 3 and delta.version == 12
        assert (await catch_up(session, 9, max_rows=2)) == (Answer.SNAPSHOT, None)  # 3 rows changed
        assert (await catch_up(session, 13)) == (Answer.SNAPSHOT, None)  # a version never made
        assert (await catch_up(session, 0)) == (Answer.SNAPSHOT, None)  # 12 ids: not smaller than the list
    await publisher.aclose()


async def test_past_mqtt_sizes_a_change_publishes_its_delta_and_no_mqtt_snapshot(
    migrated: Any, broker: BrokerInfo, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """protocol.mqtt.MAX_LIST_ITEMS (1,000,000) lowered to 3 for the test: backend.distribution's
    name for it is patched, which is what decides (a million ids would take minutes here)."""
    async with backend(migrated, broker) as (settings, distributor):
        topics = distributor.topics
        async with watching(broker, topics) as seen:
            await distributor.change_denylist([f"{c:016x}" for c in CARDS[:2]], [], "stolen")  # fits
            monkeypatch.setattr(distribution, "MAX_LIST_ITEMS", 3)
            with caplog.at_level(logging.INFO, logger="faregate.distribution"):
                await distributor.change_denylist([f"{c:016x}" for c in CARDS[2:5]], [], "stolen")
                await distributor.change_denylist([f"{c:016x}" for c in CARDS[5:6]], [], "stolen")
                await wait_for(lambda: len(seen.deltas) == 3, 10)
                # a gate left at version 1 still catches up by delta, and nothing goes on MQTT whole
                requests = SnapshotRequests(distributor.resend, window_s=2.0)
                try:
                    await handle_control_message(settings, migrated[2], request(topics, 1, 1), requests)
                    await wait_for(lambda: seen.catch_ups(1), 10)
                    await asyncio.sleep(1.0)
                finally:
                    await requests.aclose()
        assert [d.version for d in seen.deltas] == [1, 2, 3, 3]
        assert [s.version for s in seen.snapshots] == [1]  # the list of 2; none of 5 or 6 ids
        said = [r for r in caplog.records if "no MQTT snapshot" in r.getMessage()]
        assert len(said) == 1 and "snapshot.bin" in said[0].getMessage()  # said once
        current = await distributor.snapshot()
        assert len(current) == 6
        assert seen.deltas[3].base_version == 1  # the catch-up, after the three live ones
        assert caught_up(sorted(CARDS[:2]), 1, seen.deltas[3]).checksum == current.checksum


@pytest.mark.security
async def test_a_flood_of_requests_at_many_versions_stays_bounded(migrated: Any, broker: BrokerInfo) -> None:
    """Compromised gates (their MACs genuine) ask at every version there is and many there are not,
    as fast as they can: the backend answers at most `versions_per_window` versions with a delta and
    everything else with one coalesced snapshot; gates over their limit are dropped."""
    async with backend(migrated, broker) as (settings, distributor):
        topics = distributor.topics
        await history(distributor, 30)
        requests = SnapshotRequests(distributor.resend, window_s=2.0, versions_per_window=8)
        async with watching(broker, topics) as seen:
            try:
                for gate_no in range(1, 41):
                    for n in range(10):  # 10 each, over the 6 a gate may ask in a window
                        have = (gate_no * 10 + n) % 60  # 0..59: 30 real versions, 29 never made
                        await handle_control_message(settings, migrated[2], request(topics, gate_no, have),
                                                     requests)
                await wait_for(lambda: seen.snapshots and len(seen.deltas) == 8, 15)
                await asyncio.sleep(3.0)  # a window and more: nothing else follows
            finally:
                await requests.aclose()
        assert requests.dropped == 40 * 4
        assert len(seen.deltas) == 8 and len({d.base_version for d in seen.deltas}) == 8
        assert sum(requests.answers.values()) == 8  # catch-ups computed: the bound, not 60
        assert len(seen.snapshots) == 1 and requests.capped > 0
