"""A gate whose clock is far from the backend's raises one `clock_skew` alarm an hour (issue 15: a gate
clock stepped back an hour went unnoticed). Its taps are ordered by the wallet counter whatever its
clock says (tests/backend/test_ledger.py); the alarm tells the operator its times and time bands are
off."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from backend.control import handle_control_message
from backend.ingest.store import RawMessage
from backend.tables import AlarmRow
from faregate.simgate import development_mac_key
from protocol.mqtt import GateState, GateStatus, Topics, encode_with_mac
from tests.backend.conftest import make_settings


def status(gate: str, time: datetime) -> bytes:
    station, number = (int(part) for part in gate.split("-"))
    message = GateStatus(gate_id=gate, state=GateState.ONLINE, time=time)
    return encode_with_mac(message, development_mac_key(station, number))


async def skew_alarms(migrated: Any, *statuses: tuple[str, datetime]) -> list[AlarmRow]:
    database, _engine, sessions = migrated
    settings = make_settings(database, clock_skew_alarm_s=120)
    topics = Topics(settings.mqtt_prefix)
    for gate, time in statuses:
        await handle_control_message(settings, sessions, RawMessage(topics.status(gate), status(gate, time)))
    async with sessions() as session:
        return list((await session.execute(
            select(AlarmRow).where(AlarmRow.kind == "clock_skew").order_by(AlarmRow.id))).scalars())


async def test_a_gate_an_hour_behind_raises_one_alarm_an_hour(migrated: Any) -> None:
    now = datetime.now(UTC)
    behind = [("12-3", now - timedelta(hours=1) + timedelta(seconds=s)) for s in range(5)]
    alarms = await skew_alarms(migrated, *behind, ("12-4", now + timedelta(seconds=30)))
    assert [(a.gate_id, a.severity) for a in alarms] == [("12-3", "warning")]  # once; 12-4 within 120 s
    assert "behind the backend's by 36" in alarms[0].detail  # 3600 s, give or take the test's run


async def test_a_gate_ahead_is_named_too_and_a_right_clock_is_not(migrated: Any) -> None:
    now = datetime.now(UTC)
    alarms = await skew_alarms(migrated, ("1-1", now + timedelta(minutes=10)), ("1-2", now))
    assert [a.gate_id for a in alarms] == ["1-1"] and "ahead of" in alarms[0].detail
