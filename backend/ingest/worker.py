"""The ingest worker: MQTT subscriber (manual acks) -> batches -> TapStore -> PUBACK -> Committed.

The MQTT client (backend/mqtt.py, on this event loop) only appends incoming messages to a deque; the
worker takes batches of up to `ingest_batch_size` (waiting at most `ingest_batch_wait_ms` for a batch
to fill), stores them in one transaction and only then acknowledges each message to the broker. A
crash before the commit leaves every message of the batch unacknowledged, so the broker redelivers it
to the persistent session, and the gate resends anything still missing.

One bad message can never stop the ingest. Only a database outage (`is_outage`) holds a batch's acks
back and retries it; any other failure is a message's: the batch is split in halves until the failing
message stands alone, the others are stored, and that message is dead-lettered and acked (redelivery
cannot fix it). N dead letters from one gate within a window raise one `dead_letters` alarm.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from protocol.mqtt import Committed, ResendRequest, Topics, encode

from ..config import Settings
from ..mqtt import Delivery, MqttClient
from . import authn, partitions
from .store import BatchResult, GateProgress, RawMessage, Refused, TapStore, parse
from .stream import Downlink, JetStreamSource, StreamSource

log = logging.getLogger("faregate.ingest")

GAP_GRACE_S = 1.0  # a gap younger than this may still be in flight on another worker
RESEND_EVERY_S = 5.0  # ask a gate again at most this often for the same gap
RETRY_DELAY_S = 1.0  # the database is unavailable: wait, keep the messages, retry
DEAD_LETTER_ALARM_COUNT = 20  # this many dead letters from one gate...
DEAD_LETTER_ALARM_WINDOW_S = 60.0  # ...within this many seconds raise one alarm (one per window)

# PostgreSQL SQLSTATE classes a message's values can cause: data exception (22), integrity constraint
# (23), program limit exceeded (54, e.g. a value too large for an index). Every other class (connection
# 08, resources 53, operator intervention 57 with admin shutdown and statement timeout, system error 58,
# internal XX, transaction rollback 40, schema or privilege 42, ...) is the database's, not a message's.
MESSAGE_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})


def _causes(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and seen not in chain and len(chain) < 10:
        chain.append(seen)
        seen = getattr(seen, "orig", None) or seen.__cause__ or seen.__context__
    return chain


def is_outage(error: BaseException) -> bool:
    """True when `error` says the database cannot take taps now, whatever the message: then the batch
    is kept unacknowledged and retried. False when the message may be the cause: it is isolated.

    Outage: the network (OSError, a connection SQLAlchemy invalidated, DisconnectionError), the pool
    (its TimeoutError), sqlite3's OperationalError (locked, I/O, no such table) and DatabaseError
    (a damaged file), a PostgreSQL error outside MESSAGE_SQLSTATE_CLASSES, and any other database
    error not known to come from a value. Not an outage: an error from a value (ValueError, TypeError,
    OverflowError anywhere in the chain, sqlite3's IntegrityError, DataError, InterfaceError,
    ProgrammingError (binding), PostgreSQL classes 22, 23, 54), and any exception that is not the
    database's at all (a RecursionError, a bug meeting one odd payload).
    """
    chain = _causes(error)
    if any(isinstance(e, (ValueError, TypeError, OverflowError, RecursionError)) for e in chain):
        return False  # a value the driver could not encode, or our own code choking on a payload
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    for cause in chain:
        if isinstance(cause, (OSError, DisconnectionError, PoolTimeoutError)):
            return True
        sqlstate = getattr(cause, "sqlstate", None)
        if isinstance(sqlstate, str) and len(sqlstate) == 5:
            return sqlstate[:2] not in MESSAGE_SQLSTATE_CLASSES
        if isinstance(
            cause,
            (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError, sqlite3.ProgrammingError),
        ):
            return False
        if isinstance(cause, (sqlite3.OperationalError, sqlite3.DatabaseError)):
            return True
    return isinstance(error, DBAPIError)  # an unknown database error: hold the acks, do not guess


@dataclass
class OpenGap:
    """A gate's sequence gap while it lasts: when seen, when a resend was last asked, whether the
    operator was alarmed (once per gap: the record goes when the gap closes)."""

    first_seen: float
    asked_at: float = 0.0
    missing: list[tuple[int, int]] = field(default_factory=list)
    alarmed: bool = False


def _raw(message: Delivery) -> RawMessage:
    return RawMessage(message.topic, message.payload, message.mid, message.qos)


class IngestWorker:
    """One ingest worker; run several (processes or hosts) on one shared subscription to scale."""

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        *,
        client_id: str | None = None,
        on_other: Callable[[list[RawMessage]], Awaitable[None]] | None = None,
        on_stored: Callable[[BatchResult], None] | None = None,
        on_connected: Callable[[], None] | None = None,
        dead_letter_alarm: tuple[int, float] = (DEAD_LETTER_ALARM_COUNT, DEAD_LETTER_ALARM_WINDOW_S),
        stream: StreamSource | None = None,
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.mqtt_prefix)
        self.store = TapStore(sessions, authn.gate_keys(settings))  # taps need their gate's MAC
        self.signer = authn.signer(settings)  # what it sends gates is signed (docs/security.md)
        self.on_other = on_other  # a batch's status and request messages (control plane)
        self.on_stored = on_stored
        self.on_connected = on_connected  # every (re)connection: the backend republishes its state
        self.dead_letter_alarm = dead_letter_alarm  # (count, window in seconds)
        self._dead_letters: defaultdict[str, deque[float]] = defaultdict(deque)  # per gate, recent
        self._incoming: deque[Delivery] = deque()
        self.mqtt: MqttClient | JetStreamSource
        if stream is not None:  # a broker cluster's stream (ingest/stream.py), not a subscription
            downlink = (None if stream.downlink_over_nats
                        else Downlink(settings, stream.downlink, client_id or settings.ingest_client_id))
            self.mqtt = JetStreamSource(
                settings, stream.url, downlink,
                on_message=self._on_message, on_ready=self._on_ready, ack_wait_s=stream.ack_wait_s,
                backlog=lambda: len(self._incoming),
            )
        else:
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
                on_ready=self._on_ready,
            )
        self._wakeup = asyncio.Event()
        self._gaps: dict[str, OpenGap] = {}  # gates with taps missing above their committed seq
        self.connected = self.mqtt.connected  # set while subscribed
        self.stats = {"received": 0, "stored": 0, "duplicates": 0, "dead_lettered": 0, "batches": 0}

    @property
    def tap_subscription(self) -> str:
        group = self.settings.ingest_group
        return f"$share/{group}/{self.topics.all_taps}" if group else self.topics.all_taps

    def _on_ready(self) -> None:
        source = "the cluster's stream" if isinstance(self.mqtt, JetStreamSource) else self.tap_subscription
        log.info("ingest connected, taking taps from %s", source)
        if self.on_connected is not None:
            self.on_connected()

    def _on_message(self, message: Delivery) -> None:
        self._incoming.append(message)
        self._wakeup.set()

    # --- asyncio side ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, then store batches until `stop` is set; always disconnects (what is not committed
        stays unacknowledged, for the broker to redeliver)."""
        self.mqtt.start()
        gap_task = asyncio.create_task(self._gap_sweeper(stop))
        day = self.settings.service_day
        partition_task = asyncio.create_task(partitions.maintain(self.store.sessions, day, stop))
        try:
            while not stop.is_set():
                batch = await self._next_batch(stop)
                if batch:
                    await self._handle(batch)
        finally:
            gap_task.cancel()
            partition_task.cancel()
            await asyncio.wait({gap_task, partition_task})
            await self.mqtt.aclose()

    async def _next_batch(self, stop: asyncio.Event) -> list[Delivery]:
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
        batch: list[Delivery] = []
        while self._incoming and len(batch) < limit:
            batch.append(self._incoming.popleft())
        return batch

    async def _handle(self, batch: list[Delivery]) -> None:
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
            if result.dead_by_gate:
                await self._count_dead_letters(result)
            if self.on_stored is not None:
                self.on_stored(result)
        if others and self.on_other is not None:
            try:  # the batch's statuses and requests together (backend.control.handle_control_messages)
                await self.on_other([_raw(m) for m in others])
            except Exception:  # a control message must never stop the tap ingest
                log.exception("%d control message(s) failed", len(others))
        for message in others:
            self.mqtt.ack(message)

    async def _store_until_done(self, taps: list[RawMessage]) -> BatchResult:
        """Store the batch, retrying while the database is unavailable (never ack what is not committed).

        Any other failure may be one message's: the batch is stored in halves, down to the message
        that fails alone, which is dead-lettered with the error (`_store_alone`).
        """
        while True:
            try:
                return await self.store.store(taps)
            except Exception as error:
                if is_outage(error):
                    log.warning(
                        "storing %d tap message(s) failed, database unavailable (%s); retrying in %.0f s",
                        len(taps),
                        error,
                        RETRY_DELAY_S,
                    )
                    await asyncio.sleep(RETRY_DELAY_S)
                    continue
                if len(taps) == 1:
                    return await self._store_alone(taps[0], error)
                log.warning(
                    "a batch of %d failed (%s: %s); storing it in halves",
                    len(taps),
                    type(error).__name__,
                    error,
                )
                merged = BatchResult()
                half = len(taps) // 2
                merged.add(await self._store_until_done(taps[:half]))
                merged.add(await self._store_until_done(taps[half:]))
                return merged

    async def _store_alone(self, message: RawMessage, error: Exception) -> BatchResult:
        """One message failed on its own: if it carries several taps, store each tap alone (one bad
        tap must not take its neighbours with it); what still fails is dead-lettered."""
        reason = f"refused while storing: {type(error).__name__}: {error}"
        try:
            parts = [
                RawMessage(message.topic, part.payload if isinstance(part, Refused) else encode(part))
                for part in parse(message)
            ]
        except Exception:  # parse() raised: the message is the fault, whole
            parts = []
        if len(parts) < 2:
            return await self._dead_letter_until_done(message, reason)
        merged = BatchResult()
        for part in parts:
            merged.add(await self._store_until_done([part]))
        return merged

    async def _count_dead_letters(self, result: BatchResult) -> None:
        """Raise one alarm when a gate's dead letters reach the count within the window."""
        count, window = self.dead_letter_alarm
        now = time.monotonic()
        for gate, number in result.dead_by_gate.items():
            recent = self._dead_letters[gate]
            recent.extend([now] * min(number, count))
            while recent and now - recent[0] > window:
                recent.popleft()
            if len(recent) < count:
                continue
            try:
                raised = await self.store.dead_letter_alarm(gate, len(recent), window)
            except Exception as error:  # an alarm is not worth holding taps back for
                log.warning("dead-letter alarm for gate %s not stored: %s", gate, error)
                continue
            recent.clear()
            if raised:
                log.warning("gate %s: %d messages dead-lettered within %.0f s", gate, count, window)
        for gate, recent in list(self._dead_letters.items()):  # bounded by the gates of one window
            while recent and now - recent[0] > window:
                recent.popleft()
            if not recent:
                del self._dead_letters[gate]

    async def _dead_letter_until_done(self, message: RawMessage, reason: str) -> BatchResult:
        while True:
            try:
                return await self.store.dead_letter(message, reason)
            except Exception as error:
                if not is_outage(error):  # not even its dead letter can be written: log it, go on
                    log.error(
                        "message on %s (%d bytes) dropped, its dead letter failed too: %s",
                        message.topic[:300],
                        len(message.payload),
                        error,
                    )
                    return BatchResult(received=1)
                log.warning("database unavailable (%s); retrying in %.0f s", error, RETRY_DELAY_S)
                await asyncio.sleep(RETRY_DELAY_S)

    def _publish_progress(self, progress: Any) -> None:
        now_wall = datetime.now(UTC)
        now = time.monotonic()
        for gate in progress:
            assert isinstance(gate, GateProgress)
            committed = Committed(gate_id=gate.gate_id, through_seq=gate.committed_seq, time=now_wall)
            # not awaited: the next commit or the gap sweep publishes again, and a gate replays on a stall
            self.mqtt.publish_nowait(self.topics.committed(gate.gate_id), encode(self.signer.sign(committed)),
                                     retain=True)
            if not gate.missing:
                self._gaps.pop(gate.gate_id, None)
                continue
            gap = self._gaps.setdefault(gate.gate_id, OpenGap(first_seen=now))
            gap.missing = gate.missing
            if now - gap.first_seen >= GAP_GRACE_S and now - gap.asked_at >= RESEND_EVERY_S:
                for start, end in gate.missing[:16]:
                    request = ResendRequest(gate_id=gate.gate_id, from_seq=start, to_seq=end, time=now_wall)
                    self.mqtt.publish_nowait(self.topics.resend(gate.gate_id),
                                             encode(self.signer.sign(request)))
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
