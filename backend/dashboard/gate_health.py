"""The gates' own health figures, read from their retained status messages.

A gate's status carries tap-to-open p50/p99 and its tailgating / forced-door alarm counts, which the
backend does not store (the gates table keeps state, versions and backlog). Rather than change the
schema from here, the dashboard keeps the latest status of every gate in memory by subscribing,
read-only, to `{prefix}/gates/+/status` (retained, so a restarted backend knows them at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError

from gate.messages import GateState, GateStatus, Topics

from ..api.deps import ViewerDep
from ..config import Settings
from ..mqtt import make_client

log = logging.getLogger("faregate.dashboard")
router = APIRouter(tags=["dashboard"])


class GateHealth(BaseModel):
    """What the board adds to a gate row: the gate's own latency percentiles and alarm counters."""

    gate_id: str
    state: str
    received_at: datetime
    tap_to_open_p50_ms: float | None
    tap_to_open_p99_ms: float | None
    host_p99_ms: float | None
    tailgating_alarms: int | None
    forced_door_alarms: int | None


class GateHealthWatcher:
    """Latest status per gate, kept up to date by one paho subscription (paho reconnects by itself).

    paho's own network thread, as the API's Publisher uses: start/stop are synchronous and bounded, so
    the API's shutdown never waits on a half-open connection.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = Topics(settings.mqtt_prefix)
        self.latest: dict[str, GateHealth] = {}
        self._lock = threading.Lock()  # paho's thread writes, the API's event loop reads
        self.client, self._connect = make_client(settings, f"faregate-dashboard-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self.client.connect_async(**self._connect)
            self.client.loop_start()
            self._started = True

    def stop(self) -> None:
        if self._started:
            self.client.disconnect()
            self.client.loop_stop()
            self._started = False

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.topics.all_status, qos=0)  # retained: every gate's latest at once
        else:
            log.info("dashboard: broker refused the gate status subscription (%s)", reason)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self.on_status(bytes(message.payload))

    def on_status(self, payload: bytes) -> None:
        try:
            status = GateStatus.model_validate_json(payload)
        except ValidationError:
            return  # the ingest dead-letters malformed statuses; the board just ignores them
        with self._lock:
            known = self.latest.get(status.gate_id)
            if status.state == GateState.OFFLINE and known is not None:
                # a last will carries no figures: keep the last ones, mark the state
                self.latest[status.gate_id] = known.model_copy(update={"state": status.state.value})
            else:
                self.latest[status.gate_id] = self._health(status)

    def snapshot(self) -> list[GateHealth]:
        with self._lock:
            return sorted(self.latest.values(), key=lambda g: g.gate_id)

    @staticmethod
    def _health(status: GateStatus) -> GateHealth:
        return GateHealth(
            gate_id=status.gate_id,
            state=status.state.value,
            received_at=datetime.now(UTC),
            tap_to_open_p50_ms=status.tap_to_open_p50_ms,
            tap_to_open_p99_ms=status.tap_to_open_p99_ms,
            host_p99_ms=status.host_p99_ms,
            tailgating_alarms=status.tailgating_alarms,
            forced_door_alarms=status.forced_door_alarms,
        )


@contextlib.asynccontextmanager
async def watching(app: Any) -> AsyncIterator[GateHealthWatcher]:
    """Run a watcher for the app's lifetime (its settings exist once the API's own lifespan began)."""
    watcher = GateHealthWatcher(app.state.settings)
    app.state.gate_health = watcher
    watcher.start()
    try:
        yield watcher
    finally:
        await asyncio.to_thread(watcher.stop)


@router.get("/gate-health", response_model=list[GateHealth])
async def gate_health(_: ViewerDep, request: Request) -> list[GateHealth]:
    watcher: GateHealthWatcher | None = getattr(request.app.state, "gate_health", None)
    if watcher is None:
        return []
    return watcher.snapshot()
