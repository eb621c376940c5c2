"""An ingest batch's statuses are recorded together (one transaction; a city's gates reconnecting at once
send thousands), and nothing in the batch costs the others: a replay, a forgery, another worker making a
gate's row first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from backend import control
from backend.control import handle_control_messages
from backend.ingest.store import RawMessage
from backend.tables import DeadLetterRow, GateRow
from faregate.simgate import development_mac_key
from protocol.mqtt import GateState, GateStatus, SnapshotRequest, Topics, UpdateKind, encode_with_mac
from tests.backend.conftest import make_settings

T0 = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)


def status(gate_no: int, seconds: float, version: int, key: bytes | None = None) -> bytes:
    message = GateStatus(gate_id=f"12-{gate_no}", state=GateState.ONLINE,
                         time=T0 + timedelta(seconds=seconds), fare_table_version=version)
    return encode_with_mac(message, key or development_mac_key(12, gate_no))


async def gates(sessions: Any) -> dict[str, GateRow]:
    async with sessions() as session:
        return {row.gate_id: row for row in (await session.scalars(select(GateRow)))}


@pytest.mark.security
async def test_a_batch_with_a_replay_and_a_forgery_records_the_rest(migrated: Any) -> None:
    database, _engine, sessions = migrated
    settings = make_settings(database)
    topics = Topics(settings.mqtt_prefix)
    before = control.stale_statuses["12-3"]
    batch = [
        RawMessage(topics.status("12-3"), status(3, 1, version=6)),
        RawMessage(topics.status("12-4"), status(4, 1, version=6)),
        RawMessage(topics.status("12-3"), status(3, 2, version=7)),
        RawMessage(topics.status("12-3"), status(3, 0, version=5)),  # an older one, replayed: ignored
        RawMessage(topics.status("12-5"), status(5, 1, version=9, key=b"\x01" * 32)),  # forged: refused
    ]
    await handle_control_messages(settings, sessions, batch)
    rows = await gates(sessions)
    assert sorted(rows) == ["12-3", "12-4"]
    assert rows["12-3"].fare_table_version == 7 and rows["12-3"].last_seen == T0 + timedelta(seconds=2)
    assert rows["12-4"].fare_table_version == 6
    assert control.stale_statuses["12-3"] - before == 1
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(DeadLetterRow)) == 1


async def test_a_row_another_worker_made_meanwhile_costs_no_status(migrated: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers took the first statuses of one gate (a redelivery after the ack wait): the other worker
    committed the gate's row between this batch's read and its commit. The batch's insert then fails on
    the key, and each status is recorded again on its own: none is lost."""
    database, _engine, sessions = migrated
    settings = make_settings(database)
    topics = Topics(settings.mqtt_prefix)
    apply = control._apply_status
    raced: list[str] = []

    async def racing(session: Any, rows: dict[str, GateRow], message: GateStatus, *rest: Any) -> bool:
        if message.gate_id == "12-4" and not raced:
            raced.append(message.gate_id)
            async with sessions.begin() as other:  # the other worker, committing first
                other.add(GateRow(gate_id="12-4", station_id=12, gate_no=4, committed_seq=0, highest_seq=0,
                                  command_id=0, state="online", fare_table_version=1))
        return await apply(session, rows, message, *rest)

    monkeypatch.setattr(control, "_apply_status", racing)
    await handle_control_messages(settings, sessions, [
        RawMessage(topics.status("12-3"), status(3, 1, version=6)),
        RawMessage(topics.status("12-4"), status(4, 1, version=6)),
    ])
    rows = await gates(sessions)
    assert raced == ["12-4"]
    assert rows["12-3"].fare_table_version == 6
    assert rows["12-4"].fare_table_version == 6 and rows["12-4"].last_seen == T0 + timedelta(seconds=1)


async def test_a_request_whose_answer_fails_costs_the_batch_no_status(migrated: Any) -> None:
    """A snapshot request in the batch whose republish raises (the broker away, a bug): the statuses
    around it, a last will among them (sent once), are recorded all the same."""
    database, _engine, sessions = migrated
    settings = make_settings(database)
    topics = Topics(settings.mqtt_prefix)

    class Failing:
        async def resend(self, *_: Any) -> None:
            raise RuntimeError("the republish failed")

    request = SnapshotRequest(gate_id="12-3", kind=UpdateKind.DENYLIST, have_version=1, time=T0)
    will = GateStatus(gate_id="12-4", state=GateState.OFFLINE)
    await handle_control_messages(settings, sessions, [
        RawMessage(topics.status("12-3"), status(3, 1, version=6)),
        RawMessage(topics.request("12-3"), encode_with_mac(request, development_mac_key(12, 3))),
        RawMessage(topics.status("12-4"), encode_with_mac(will, development_mac_key(12, 4))),
    ], Failing())
    rows = await gates(sessions)
    assert rows["12-3"].fare_table_version == 6
    assert rows["12-4"].state == GateState.OFFLINE.value
