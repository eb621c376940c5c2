"""The ingest worker: paho subscriber (manual acks) -> batches -> TapStore -> PUBACK -> Committed.

paho's network thread only appends incoming messages to a deque; the asyncio side takes batches of up
to `ingest_batch_size` (waiting at most `ingest_batch_wait_ms` for a batch to fill), stores them in one
transaction and only then acknowledges each message to the broker. A crash before the commit leaves
every message of the batch unacknowledged, so the broker redelivers it to the persistent session, and
the gate resends anything still missing. Nothing here raises out of the loop on bad input: a payload
that is not a valid tap is dead-lettered (and acked, since redelivery cannot fix it).
"""

from __future__ import annotations

import asyncio
import logging
import select
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import paho.mqtt.client as mqtt
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from protocol.mqtt import Committed, ResendRequest, Topics, encode

from ..config import Settings
from ..mqtt import make_client
from .store import BatchResult, GateProgress, RawMessage, TapStore

log = logging.getLogger("faregate.ingest")

GAP_GRACE_S = 1.0  # a gap younger than this may still be in flight on another worker
RESEND_EVERY_S = 5.0  # ask a gate again at most this often for the same gap
RETRY_DELAY_S = 1.0  # the database refused a batch: wait, keep the messages, retry
READ_BURST = 2000  # packets read per readable event at most, so the event loop keeps turning


@dataclass
class OpenGap:
    """A gate's sequence gap while it lasts: when seen, when a resend was last asked, whether the
    operator was alarmed (once per gap: the record goes when the gap closes)."""

    first_seen: float
    asked_at: float = 0.0
    missing: list[tuple[int, int]] = field(default_factory=list)
    alarmed: bool = False


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
        self.client, self._connect = make_client(
            settings, client_id or settings.ingest_client_id, manual_ack=True, persistent=True
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self._incoming: deque[RawMessage] = deque()
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gaps: dict[str, OpenGap] = {}  # gates with taps missing above their committed seq
        self.connected = asyncio.Event()
        self.stats = {"received": 0, "stored": 0, "duplicates": 0, "dead_lettered": 0, "batches": 0}

    # --- paho, driven by this event loop ------------------------------------------------------------

    @property
    def tap_subscription(self) -> str:
        group = self.settings.ingest_group
        return f"$share/{group}/{self.topics.all_taps}" if group else self.topics.all_taps

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any = None
    ) -> None:
        if getattr(reason_code, "is_failure", False):
            log.error("broker refused the ingest connection: %s", reason_code)
            return
        client.subscribe(
            [(self.tap_subscription, 1), (self.topics.all_status, 1), (self.topics.all_requests, 1)]
        )
        log.info("ingest connected, subscribed to %s", self.tap_subscription)
        self.connected.set()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._incoming.append(RawMessage(message.topic, bytes(message.payload), message.mid, message.qos))
        self._wakeup.set()

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Let the event loop watch paho's socket (as aiomqtt does) instead of a network thread:
        on this 2-core machine a second thread costs about a third of the throughput in GIL hand-offs."""
        client = self.client
        client.on_socket_open = lambda _c, _u, sock: loop.add_reader(sock, self._read, sock)
        client.on_socket_close = lambda _c, _u, sock: self._forget(loop.remove_reader, sock)
        client.on_socket_register_write = lambda c, _u, sock: loop.add_writer(sock, c.loop_write)
        client.on_socket_unregister_write = lambda _c, _u, sock: self._forget(loop.remove_writer, sock)

    @staticmethod
    def _forget(remove: Callable[[Any], bool], sock: Any) -> None:
        remove(sock)

    def _read(self, sock: Any) -> None:
        """Read every packet already waiting (paho's loop_read takes one per call)."""
        for _ in range(READ_BURST):
            if self.client.loop_read() != mqtt.MQTT_ERR_SUCCESS or self.client.socket() is not sock:
                return
            if not select.select([cast(Any, sock)], [], [], 0)[0]:
                return

    async def _network(self, stop: asyncio.Event) -> None:
        """paho's housekeeping (keepalive, retries) and reconnection, once a second."""
        while not stop.is_set():
            if self.client.loop_misc() == mqtt.MQTT_ERR_NO_CONN or not self.client.is_connected():
                self.connected.clear()
                try:
                    self.client.reconnect()
                except OSError as error:
                    log.warning("broker unreachable (%s); retrying", error)
            await asyncio.sleep(1.0)

    # --- asyncio side ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, then store batches until `stop` is set; always disconnects."""
        self._loop = asyncio.get_running_loop()
        self._attach(self._loop)
        self.client.connect_async(**self._connect)
        network = asyncio.create_task(self._network(stop))
        gap_task = asyncio.create_task(self._gap_sweeper(stop))
        try:
            while not stop.is_set():
                batch = await self._next_batch(stop)
                if batch:
                    await self._handle(batch)
        finally:
            gap_task.cancel()
            network.cancel()
            await asyncio.gather(gap_task, network, return_exceptions=True)
            self.client.disconnect()

    async def _next_batch(self, stop: asyncio.Event) -> list[RawMessage]:
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
        batch: list[RawMessage] = []
        while self._incoming and len(batch) < limit:
            batch.append(self._incoming.popleft())
        return batch

    async def _handle(self, batch: list[RawMessage]) -> None:
        taps = [m for m in batch if m.topic.endswith("/taps")]
        others = [m for m in batch if not m.topic.endswith("/taps")]
        if taps:
            result = await self._store_until_done(taps)
            self.stats["received"] += result.received
            for message in taps:
                if message.qos:
                    self.client.ack(message.mid, message.qos)
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
                    await self.on_other(message)
                except Exception:  # a control message must never stop the tap ingest
                    log.exception("control message on %s failed", message.topic)
            if message.qos:
                self.client.ack(message.mid, message.qos)

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
            self.client.publish(self.topics.committed(gate.gate_id), encode(committed), qos=1, retain=True)
            if not gate.missing:
                self._gaps.pop(gate.gate_id, None)
                continue
            gap = self._gaps.setdefault(gate.gate_id, OpenGap(first_seen=now))
            gap.missing = gate.missing
            if now - gap.first_seen >= GAP_GRACE_S and now - gap.asked_at >= RESEND_EVERY_S:
                for start, end in gate.missing[:16]:
                    request = ResendRequest(gate_id=gate.gate_id, from_seq=start, to_seq=end, time=now_wall)
                    self.client.publish(self.topics.resend(gate.gate_id), encode(request), qos=1)
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
