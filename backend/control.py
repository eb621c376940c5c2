"""Control-plane messages from gates: status (last seen, versions, mode) and snapshot requests."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from protocol.mqtt import GateState, GateStatus, SnapshotRequest, Topics, UpdateKind, parse_gate_id

from .config import Settings
from .ingest.store import RawMessage
from .tables import AlarmRow, DeadLetterRow, GateRow

log = logging.getLogger("faregate.control")


async def handle_control_message(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    message: RawMessage,
    distributor: object | None = None,
) -> None:
    leaf = message.topic.rsplit("/", 1)[-1]
    try:
        gate = Topics.gate_of(message.topic)
        station_id, gate_no = parse_gate_id(gate)
        if leaf == "status":
            status = GateStatus.model_validate_json(message.payload)
            if status.gate_id != gate:
                raise ValueError(f"status of gate {status.gate_id} on the topic of gate {gate}")
            await record_status(sessions, status, station_id, gate_no)
        elif leaf == "request":
            request = SnapshotRequest.model_validate_json(message.payload)
            if distributor is not None:
                await distributor.resend(request.kind)  # type: ignore[attr-defined]
            log.info(
                "gate %s asked for a %s snapshot (has version %d)",
                gate,
                request.kind.value,
                request.have_version,
            )
    except (ValidationError, ValueError) as error:
        async with sessions.begin() as session:
            session.add(
                DeadLetterRow(
                    received_at=datetime.now(UTC),
                    topic=message.topic[:300],
                    payload=bytes(message.payload),
                    reason=f"invalid {leaf}: {error}"[:2000],
                )
            )


async def record_status(
    sessions: async_sessionmaker[AsyncSession], status: GateStatus, station_id: int, gate_no: int
) -> None:
    async with sessions.begin() as session:
        row = await session.get(GateRow, status.gate_id)
        if row is None:
            row = GateRow(
                gate_id=status.gate_id,
                station_id=station_id,
                gate_no=gate_no,
                committed_seq=0,
                highest_seq=0,
                command_id=0,
            )
            session.add(row)
        if status.state == GateState.OFFLINE and row.state != GateState.OFFLINE.value:
            session.add(
                AlarmRow(
                    created_at=datetime.now(UTC),
                    kind="gate_offline",
                    severity="warning",
                    gate_id=status.gate_id,
                    detail="the broker published the gate's last will",
                )
            )
        row.state = status.state.value
        row.last_seen = status.time or datetime.now(UTC)
        if status.state == GateState.ONLINE:
            for name in (
                "mode",
                "fare_table_version",
                "denylist_version",
                "actions_version",
                "journal_pending",
                "software",
                "tap_to_open_p50_ms",
                "tap_to_open_p99_ms",
                "host_p99_ms",
                "tailgating_alarms",
                "forced_door_alarms",
            ):
                value = getattr(status, name)
                if value is not None:
                    setattr(row, name, int(value) if name == "mode" else value)


__all__ = ["UpdateKind", "handle_control_message", "record_status"]
