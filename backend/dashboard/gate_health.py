"""The gates' own health figures for the board, from the gates table.

A gate's retained status carries its tap-to-open p50/p99, its own processing p99 and its tailgating /
forced-door alarm counts; the ingest stores them on the gate's row (backend/control.py) with its
state and versions, so every API process serves the same figures and a restarted backend has them.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import select

from ..api.deps import SessionDep, ViewerDep
from ..tables import GateRow

router = APIRouter(tags=["dashboard"])


class GateHealth(BaseModel):
    """What the board adds to a gate row: the gate's own latency percentiles and alarm counters."""

    gate_id: str
    state: str
    received_at: datetime | None  # when the gate last reported (its status time)
    tap_to_open_p50_ms: float | None
    tap_to_open_p99_ms: float | None
    host_p99_ms: float | None
    tailgating_alarms: int | None
    forced_door_alarms: int | None


@router.get("/gate-health", response_model=list[GateHealth])
async def gate_health(_: ViewerDep, session: SessionDep) -> list[GateHealth]:
    rows = (await session.execute(select(GateRow).order_by(GateRow.gate_id))).scalars().all()
    return [
        GateHealth(
            gate_id=row.gate_id,
            state=row.state,
            received_at=row.last_seen,
            tap_to_open_p50_ms=row.tap_to_open_p50_ms,
            tap_to_open_p99_ms=row.tap_to_open_p99_ms,
            host_p99_ms=row.host_p99_ms,
            tailgating_alarms=row.tailgating_alarms,
            forced_door_alarms=row.forced_door_alarms,
        )
        for row in rows
    ]
