"""Replayed genuine statuses: a MAC proves the gate said it, not that it says it now.

Before: alternating two captured statuses (auth_refused 5, then an older one with 3) raised a critical
`downlink_refused` alarm on every message, and each replay moved the gate's last_seen backwards and
put its older versions back. Now a status not newer than the gate's last_seen is ignored and counted,
and the alarm goes through `alarm_once` (one unacknowledged alarm a minute per gate).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from backend import control
from backend.control import handle_control_message
from backend.ingest.store import RawMessage
from backend.tables import AlarmRow, GateRow
from faregate.simgate import development_mac_key
from protocol.mqtt import GateState, GateStatus, Topics, encode_with_mac
from tests.backend.conftest import make_settings

pytestmark = pytest.mark.security

KEY = development_mac_key(12, 3)
T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def status(seconds: float, refused: int, fare_table_version: int = 7) -> bytes:
    message = GateStatus(gate_id="12-3", state=GateState.ONLINE, time=T0 + timedelta(seconds=seconds),
                         fare_table_version=fare_table_version, auth_refused=refused,
                         auth_alarm="command: unsigned")
    return encode_with_mac(message, KEY)


async def send(migrated: Any, *payloads: bytes) -> tuple[list[AlarmRow], GateRow]:
    database, _engine, sessions = migrated
    settings = make_settings(database)
    topic = Topics(settings.mqtt_prefix).status("12-3")
    for payload in payloads:
        await handle_control_message(settings, sessions, RawMessage(topic, payload))
    async with sessions() as session:
        alarms = list((await session.execute(
            select(AlarmRow).where(AlarmRow.kind == "downlink_refused"))).scalars())
        gate = await session.get(GateRow, "12-3")
    assert gate is not None
    return alarms, gate


async def test_alternating_two_captured_statuses_raises_one_alarm_and_keeps_the_newest(migrated: Any) -> None:
    older, newer = status(1, refused=3, fare_table_version=6), status(2, refused=5, fare_table_version=7)
    before = control.stale_statuses["12-3"]
    alarms, gate = await send(migrated, older, newer, *[older, newer] * 10)
    assert len(alarms) == 1 and alarms[0].detail.startswith("3 ")
    assert gate.last_seen == T0 + timedelta(seconds=2)  # never moved backwards
    assert gate.fare_table_version == 7  # the replayed older status changed nothing
    assert control.stale_statuses["12-3"] - before == 20  # every replay ignored and counted


async def test_a_replayed_status_does_not_move_last_seen_backwards(migrated: Any) -> None:
    _, gate = await send(migrated, status(10, refused=0), status(5, refused=0, fare_table_version=1))
    assert gate.last_seen == T0 + timedelta(seconds=10) and gate.fare_table_version == 7
    _, gate = await send(migrated, status(11, refused=0, fare_table_version=8))  # the next genuine one
    assert gate.last_seen == T0 + timedelta(seconds=11) and gate.fare_table_version == 8


async def test_a_gate_restarting_often_raises_at_most_one_alarm_a_minute(migrated: Any) -> None:
    # fresh statuses whose count falls and grows again (a gate restarting, or its key misused)
    counts = [5, 1, 5, 1, 5, 1, 5, 1]
    alarms, _ = await send(migrated, *[status(i + 1, refused=c) for i, c in enumerate(counts)])
    assert len(alarms) == 1
