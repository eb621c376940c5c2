"""Forged and conflicting gate messages against the real ingest, on every broker and database.

The attacker is any client on the broker without the gate's MAC key. Before uplink MACs a forged tap
using a tap id the real gate had not reached yet was stored, and the genuine tap was then silently
taken for a duplicate (issue 12).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from backend.tables import AlarmRow, DeadLetterRow, GateRow, TapRow
from faregate.simgate import development_mac_key
from protocol.mqtt import GateState, GateStatus, encode, encode_taps, encode_with_mac, with_mac
from tests.backend.conftest import BrokerInfo, make_tap, wait_for
from tests.backend.test_ingest import Running, gate_for, ingest  # noqa: F401  (the fixture)

pytestmark = pytest.mark.security

KEY = development_mac_key(12, 3)  # gate 12-3's own key
STRANGER = development_mac_key(12, 4)  # another gate's key: valid MACs, for the wrong gate


async def alarms(run: Running, kind: str) -> list[AlarmRow]:
    async with run.sessions() as session:
        return list((await session.execute(select(AlarmRow).where(AlarmRow.kind == kind))).scalars())


async def stored(run: Running, tap_id: str) -> TapRow | None:
    async with run.sessions() as session:
        return await session.get(TapRow, tap_id)


async def dead_reasons(run: Running) -> list[str]:
    async with run.sessions() as session:
        return list((await session.execute(select(DeadLetterRow.reason))).scalars())


async def test_a_forged_tap_is_dead_lettered_and_alarmed_and_the_genuine_one_stored(
        ingest: Running, broker: BrokerInfo) -> None:  # noqa: F811
    gate = await gate_for(ingest, broker)
    try:
        topic = ingest.topics.taps("12-3")
        genuine = make_tap(1, fare=200, balance_after=800)
        forged = make_tap(1, fare=0).model_copy(update={"mac": None})  # no MAC at all
        wrong_key = with_mac(make_tap(2, fare=0), STRANGER)  # a MAC, under another gate's key
        tampered = make_tap(3).model_copy(update={"fare": 999})  # the real gate's MAC, content changed
        for message in (forged, wrong_key, tampered):
            await asyncio.to_thread(gate.publish, topic, encode(message))
        await asyncio.to_thread(gate.publish, topic, encode_taps([encode(forged), encode(wrong_key)]))
        await wait_for(lambda: ingest.worker.stats["dead_lettered"] >= 5)
        assert await stored(ingest, "12-3:1") is None and await stored(ingest, "12-3:2") is None
        reasons = await dead_reasons(ingest)
        assert sum("forged" in r for r in reasons) == 5
        (alarm,) = await alarms(ingest, "tap_forged")  # one alarm for the burst, not one per message
        assert alarm.gate_id == "12-3"
        # the real gate's taps with the same ids are stored, as sent
        for seq in (1, 2, 3):
            tap = genuine if seq == 1 else make_tap(seq)
            await asyncio.to_thread(gate.publish, topic, encode(tap))
        await wait_for(lambda: ingest.worker.stats["stored"] >= 3)
        row = await stored(ingest, "12-3:1")
        assert row is not None and (row.fare, row.balance_after) == (200, 800)
    finally:
        gate.close()


async def test_a_second_tap_with_a_stored_id_raises_tap_conflict_and_changes_nothing(
        ingest: Running, broker: BrokerInfo) -> None:  # noqa: F811
    gate = await gate_for(ingest, broker)
    try:
        topic = ingest.topics.taps("12-3")
        genuine = [make_tap(seq, fare=300) for seq in (1, 2)]
        await asyncio.to_thread(gate.publish, topic, encode_taps([encode(t) for t in genuine]))
        await wait_for(lambda: ingest.worker.stats["stored"] >= 2)
        # the same taps again (a resend): duplicates, no alarm
        await asyncio.to_thread(gate.publish, topic, encode(genuine[0]))
        await wait_for(lambda: ingest.worker.stats["duplicates"] >= 1)
        assert await alarms(ingest, "tap_conflict") == []
        # a different tap under a stored id, with a valid MAC: later, and twice within one message
        await asyncio.to_thread(gate.publish, topic, encode(make_tap(1, fare=0)))
        twins = [make_tap(3, fare=300), make_tap(3, fare=0)]
        await asyncio.to_thread(gate.publish, topic, encode_taps([encode(t) for t in twins]))
        stats = ingest.worker.stats
        await wait_for(lambda: stats["stored"] >= 3 and stats["dead_lettered"] >= 2)
        conflicts = await alarms(ingest, "tap_conflict")
        assert sorted(a.tap_id or "" for a in conflicts) == ["12-3:1", "12-3:3"]
        for tap_id in ("12-3:1", "12-3:3"):
            row = await stored(ingest, tap_id)
            assert row is not None and row.fare == 300  # the first one stays, whole
        assert sum(r.startswith("tap_conflict") for r in await dead_reasons(ingest)) == 2
    finally:
        gate.close()


async def test_a_forged_status_is_refused_and_a_gate_reporting_forgeries_raises_an_alarm(
        ingest: Running, broker: BrokerInfo) -> None:  # noqa: F811
    gate = await gate_for(ingest, broker)
    try:
        topic = ingest.topics.status("12-3")
        online = GateStatus(gate_id="12-3", state=GateState.ONLINE, time=datetime.now(UTC),
                            fare_table_version=7)
        await asyncio.to_thread(gate.publish, topic, encode(online))  # no MAC
        await asyncio.to_thread(gate.publish, topic, encode_with_mac(online, STRANGER))
        await wait_for(lambda: alarms(ingest, "uplink_forged"))
        await wait_for(lambda: ingest.count(DeadLetterRow))
        async with ingest.sessions() as session:
            assert await session.get(GateRow, "12-3") is None  # nothing recorded from a forgery
        reporting = online.model_copy(update={"auth_refused": 3, "auth_alarm": "command: unsigned"})
        await asyncio.to_thread(gate.publish, topic, encode_with_mac(reporting, KEY))
        (alarm,) = await wait_for(lambda: alarms(ingest, "downlink_refused"))
        assert alarm.gate_id == "12-3" and alarm.detail.startswith("3 ") and "unsigned" in alarm.detail
        later = datetime.now(UTC) + timedelta(seconds=1)  # newer than `reporting`: not taken for a replay
        same_count = reporting.model_copy(update={"time": later})
        await asyncio.to_thread(gate.publish, topic, encode_with_mac(same_count, KEY))  # same count
        # a sentinel published after it: once it is recorded, the status before it has been handled
        sentinel = same_count.model_copy(update={"time": later + timedelta(seconds=1),
                                                 "fare_table_version": 8})
        await asyncio.to_thread(gate.publish, topic, encode_with_mac(sentinel, KEY))

        async def sentinel_recorded() -> bool:
            async with ingest.sessions() as session:
                row = await session.get(GateRow, "12-3")
                return row is not None and row.fare_table_version == 8

        await wait_for(sentinel_recorded)
        assert len(await alarms(ingest, "downlink_refused")) == 1
    finally:
        gate.close()
