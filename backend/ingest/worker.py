"""The ingest worker: MQTT subscriber (manual acks) -> batches -> TapStore -> PUBACK -> Committed.

The MQTT client (backend/mqtt.py, on this event loop) only appends incoming messages to a deque; the
worker takes batches of up to `ingest_batch_size` (waiting at most `ingest_batch_wait_ms` for a batch
to fill), stores them in one transaction and only then acknowledges each message to the broker. A
crash before the commit leaves every message of the batch unacknowledged, so the broker redelivers it
to the persistent session, and the gate resends anything still missing. Nothing here raises out of the
loop on bad input: a payload that is not a valid tap is dead-lettered (and acked, since redelivery
cannot fix it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from protocol.mqtt import Committed, ResendRequest, Topics, encode

from ..config import Settings
from ..mqtt import Message, MqttClient
from .store import BatchResult, GateProgress, RawMessage, TapStore

log = logging.getLogger("faregate.ingest")

GAP_GRACE_S = 1.0  # a gap younger than this may still be in flight on another worker
RESEND_EVERY_S = 5.0  # ask a gate again at most this often for the same gap
RETRY_DELAY_S = 1.0  # the database refused a batch: wait, keep the messages, retry


@dataclass
class OpenGap:
    """A gate's sequence gap while it lasts: when seen, when a resend was last asked, whether the
    operator was alarmed (once per gap: the record goes when the gap closes)."""

    first_seen: float
    asked_at: float = 0.0
    missing: list[tuple[int, int]] = field(default_factory=list)
    alarmed: bool = False


def _raw(message: Message) -> RawMessage:
    return RawMessage(message.topic, message.payload, message.mid, message.qos)


class IngestWorker:
    """One ingest worker; run several (processes or hosts) on one shared subscription to scale."""

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        *,
        client_id: str | None = None,
        on_other: Callable[[RawMessage], Awaitable[None]] | None = None,
        on_stored: Callable[[BatchResult], None] | None = None,
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.mqtt_prefix)
        self.store = TapStore(sessions)
        self.on_other = on_other  # status and request messages (control plane)
        self.on_stored = on_stored
        self.mqtt = MqttClient(
            settings,
            client_id or settings.ingest_client_id,
            manual_ack=True,
            persistent=True,
            subscriptions=[
                (self.tap_subscription, 1),
                (self.topics.all_status, 1),
                (self.topics.all_requests, 1),
            ],
            on_message=self._on_message,
            on_ready=lambda: log.info("ingest connected, subscribed to %s", self.tap_subscription),
        )
        self._incoming: deque[Message] = deque()
        self._wakeup = asyncio.Event()
        self._gaps: dict[str, OpenGap] = {}  # gates with taps missing above their committed seq
        self.connected = self.mqtt.connected  # set while subscribed
        self.stats = {"received": 0, "stored": 0, "duplicates": 0, "dead_lettered": 0, "batches": 0}

    @property
    def tap_subscription(self) -> str:
        group = self.settings.ingest_group
        return f"$share/{group}/{self.topics.all_taps}" if group else self.topics.all_taps

    def _on_message(self, message: Message) -> None:
        self._incoming.append(message)
        self._wakeup.set()

    # --- asyncio side ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, then store batches until `stop` is set; always disconnects (what is not committed
        stays unacknowledged, for the broker to redeliver)."""
        self.mqtt.start()
        gap_task = asyncio.create_task(self._gap_sweeper(stop))
        try:
            while not stop.is_set():
                batch = await self._next_batch(stop)
                if batch:
                    await self._handle(batch)
        finally:
            gap_task.cancel()
            await asyncio.wait({gap_task})
            await self.mqtt.aclose()

    async def _next_batch(self, stop: asyncio.Event) -> list[Message]:
        if not self._incoming:
            self._wakeup.clear()
            if not self._incoming:
                waiter = asyncio.create_task(self._wakeup.wait())
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({waiter, stopper}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
        limit = self.settings.ingest_batch_size
        if self._incoming and len(self._incoming) < limit and self.settings.ingest_batch_wait_ms:
            log.debug("batch open with %d message(s)", len(self._incoming))
            deadline = time.monotonic() + self.settings.ingest_batch_wait_ms / 1000
            while len(self._incoming) < limit and time.monotonic() < deadline and not stop.is_set():
                await asyncio.sleep(min(0.005, max(0.0, deadline - time.monotonic())))
        batch: list[Message] = []
        while self._incoming and len(batch) < limit:
            batch.append(self._incoming.popleft())
        return batch

    async def _handle(self, batch: list[Message]) -> None:
        taps = [m for m in batch if m.topic.endswith("/taps")]
        others = [m for m in batch if not m.topic.endswith("/taps")]
        if taps:
            result = await self._store_until_done([_raw(m) for m in taps])
            self.stats["received"] += result.received
            for message in taps:
                self.mqtt.ack(message)
            self.stats["stored"] += result.stored
            self.stats["duplicates"] += result.duplicates
            self.stats["dead_lettered"] += result.dead_lettered
            self.stats["batches"] += 1
            self._publish_progress(result.gates.values())
            if self.on_stored is not None:
                self.on_stored(result)
        for message in others:
            if self.on_other is not None:
                try:
                    await self.on_other(_raw(message))
                except Exception:  # a control message must never stop the tap ingest
                    log.exception("control message on %s failed", message.topic)
            self.mqtt.ack(message)

    async def _store_until_done(self, taps: list[RawMessage]) -> BatchResult:
        """Store the batch, retrying while the database is unavailable (never ack what is not committed).

        A row the database itself refuses (integrity or data error) must not block the others: the
        batch is then stored one message at a time and the refused one dead-lettered with the error.
        """
        while True:
            try:
                return await self.store.store(taps)
            except (IntegrityError, DataError) as error:
                if len(taps) == 1:
                    return await self._dead_letter_until_done(taps[0], f"database refused the tap: {error}")
                merged = BatchResult()
                for message in taps:
                    one = await self._store_until_done([message])
                    merged.received += one.received
                    merged.stored += one.stored
                    merged.duplicates += one.duplicates
                    merged.dead_lettered += one.dead_lettered
                    merged.gates.update(one.gates)
                return merged
            except Exception as error:
                log.warning(
                    "storing %d tap(s) failed (%s); retrying in %.0f s", len(taps), error, RETRY_DELAY_S
                )
                await asyncio.sleep(RETRY_DELAY_S)

    async def _dead_letter_until_done(self, message: RawMessage, reason: str) -> BatchResult:
        while True:
            try:
                return await self.store.dead_letter(message, reason)
            except Exception as error:
                log.warning("database unavailable (%s); retrying in %.0f s", error, RETRY_DELAY_S)
                await asyncio.sleep(RETRY_DELAY_S)

    def _publish_progress(self, progress: Any) -> None:
        now_wall = datetime.now(UTC)
        now = time.monotonic()
        for gate in progress:
            assert isinstance(gate, GateProgress)
            committed = Committed(gate_id=gate.gate_id, through_seq=gate.committed_seq, time=now_wall)
            # not awaited: the next commit or the gap sweep publishes again, and a gate replays on a stall
            self.mqtt.publish_nowait(self.topics.committed(gate.gate_id), encode(committed), retain=True)
            if not gate.missing:
                self._gaps.pop(gate.gate_id, None)
                continue
            gap = self._gaps.setdefault(gate.gate_id, OpenGap(first_seen=now))
            gap.missing = gate.missing
            if now - gap.first_seen >= GAP_GRACE_S and now - gap.asked_at >= RESEND_EVERY_S:
                for start, end in gate.missing[:16]:
                    request = ResendRequest(gate_id=gate.gate_id, from_seq=start, to_seq=end, time=now_wall)
                    self.mqtt.publish_nowait(self.topics.resend(gate.gate_id), encode(request))
                    log.info("gate %s: asked to resend %d..%d", gate.gate_id, start, end)
                gap.asked_at = now

    async def _gap_sweeper(self, stop: asyncio.Event) -> None:
        """Re-check gates with a gap even when they send nothing new, so the resend request goes out."""
        while not stop.is_set():
            await asyncio.sleep(GAP_GRACE_S / 2)
            if not self._gaps:
                continue
            try:
                progress = await self.store.progress(list(self._gaps))
            except Exception as error:
                log.warning("gap check failed: %s", error)
                continue
            self._publish_progress(progress.values())
            await self._alarm_old_gaps()

    async def _alarm_old_gaps(self) -> None:
        """A gap the gate has not filled for `ingest_gap_alarm_s` is an operator's matter: a gate
        whose journal lost taps, or one that cannot reach the broker for its resends."""
        now = time.monotonic()
        for gate, gap in list(self._gaps.items()):
            age = now - gap.first_seen
            if gap.alarmed or not gap.missing or age < self.settings.ingest_gap_alarm_s:
                continue
            try:
                await self.store.gap_alarm(gate, gap.missing, age)
            except Exception as error:
                log.warning("gap alarm for gate %s not stored yet: %s", gate, error)
                continue
            gap.alarmed = True
            log.warning("gate %s: taps %s still missing after %.0f s", gate, gap.missing[:4], age)
