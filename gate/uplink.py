"""The gate's MQTT side: taps out of the journal, acks and updates in (docs/mqtt.md).

Store-and-forward: taps are published from the journal, never from memory, with at most `window`
QoS 1 publishes in flight (a paho client handed a whole backlog at once stalls at 65,535 message ids).
A backlog goes as arrays of up to `batch_max` taps a message; a lone tap as itself, at once.
A tap leaves the journal only when the backend's "committed through seq N" arrives: a PUBACK covers one
hop, the backend's ack covers the database. After every reconnect, on a resend request, and when the
backend's ack has not moved for `stall_s`, publishing starts again from the last committed seq; the
backend stores by tap id, so repeats are harmless.

The connection is a plain reconnect loop around `async with aiomqtt.Client` (aiomqtt's own advice);
the gate keeps deciding offline meanwhile, its journal growing. Updates (deny-list, fare table,
actions, mode) go through LocalState, which applies them all or nothing; a refused one makes the gate
ask for a snapshot.

MQTT 3.1.1 by default: the embedded amqtt broker speaks nothing newer, and a gate needs no v5 feature.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiomqtt
from pydantic import ValidationError

from protocol.mqtt import (
    MAX_TAPS_PER_MESSAGE,
    ActionListMessage,
    Committed,
    DenyListDeltaMessage,
    DenyListSnapshotMessage,
    FareTableMessage,
    GateCommand,
    GateState,
    GateStatus,
    ResendRequest,
    SnapshotRequest,
    Topics,
    UpdateKind,
    encode,
    encode_taps,
)

from .journal import Journal
from .state import LocalState, Outcome, UpdateResult

log = logging.getLogger(__name__)

SOFTWARE = "faregate-gate/0.1"


class Uplink:
    """Publishes one gate's journal and applies what the backend sends it."""

    def __init__(self, *, gate_id: str, host: str, port: int, prefix: str, journal: Journal,
                 state: LocalState, final_seq: Callable[[], int], window: int = 500, batch_max: int = 50,
                 heartbeat_s: float = 30.0, stall_s: float = 10.0,
                 on_mode: Callable[[], Awaitable[None]] | None = None,
                 extra_status: Callable[[], dict[str, Any]] | None = None,
                 username: str | None = None, password: str | None = None) -> None:
        self.gate_id = gate_id
        self.host, self.port = host, port
        self.topics = Topics(prefix)
        self.journal = journal
        self.state = state
        self.final_seq = final_seq
        self.window = window  # MQTT messages in flight (QoS 1, not yet PUBACKed)
        if not 1 <= batch_max <= MAX_TAPS_PER_MESSAGE:
            raise ValueError(f"batch_max must be 1..{MAX_TAPS_PER_MESSAGE}, not {batch_max}")
        self.batch_max = batch_max  # taps in one message at most (a backlog goes as arrays)
        self.heartbeat_s = heartbeat_s
        self.stall_s = stall_s
        self.on_mode = on_mode
        self.extra_status = extra_status
        self.username, self.password = username, password
        self.connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._cursor = 0  # highest seq handed to the broker in this connection
        self._last_progress = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._client: aiomqtt.Client | None = None
        self.published = 0
        self.rejected_updates = 0
        self.connects = 0

    # ---------------------------------------------------------------------------- running
    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"uplink {self.gate_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def tap_journaled(self, seq: int) -> None:
        """The controller finished a tap: publish it as soon as the link allows."""
        self._wake.set()

    async def _run(self) -> None:
        delay = 0.2
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                log.info("gate %s: broker %s:%s unreachable or lost (%s)", self.gate_id, self.host,
                         self.port, exc)
            finally:
                self.connected.clear()
                self._client = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _session(self) -> None:
        offline = encode(GateStatus(gate_id=self.gate_id, state=GateState.OFFLINE))
        will = aiomqtt.Will(self.topics.status(self.gate_id), offline, qos=1, retain=True)
        async with aiomqtt.Client(
            self.host, self.port, identifier=f"faregate-gate-{self.gate_id}", will=will,
            protocol=aiomqtt.ProtocolVersion.V311, clean_session=True, keepalive=15,
            username=self.username, password=self.password,
            max_queued_outgoing_messages=None,
        ) as client:
            self._client = client
            self.connects += 1
            for topic in (self.topics.committed(self.gate_id), self.topics.resend(self.gate_id),
                          self.topics.command(self.gate_id), self.topics.denylist_delta,
                          self.topics.denylist_snapshot, self.topics.fare_table, self.topics.actions):
                await client.subscribe(topic, qos=1)
            self.connected.set()
            self._cursor = self.journal.committed_through  # resend everything not yet committed
            self._last_progress = time.monotonic()
            await self.publish_status()
            # Not a TaskGroup: it would wrap a lost broker's MqttError in an ExceptionGroup, and the
            # reconnect loop must see the MqttError itself.
            tasks = {asyncio.create_task(self._publisher(client)), asyncio.create_task(self._heartbeat()),
                     asyncio.create_task(self._receiver(client))}
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()  # raises what ended the session
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await task

    async def _receiver(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            await self._on_message(str(message.topic), bytes(message.payload))

    # --------------------------------------------------------------------------- publishing
    async def _publisher(self, client: aiomqtt.Client) -> None:
        in_flight = asyncio.Semaphore(self.window)
        tasks: set[asyncio.Task[None]] = set()

        async def publish(payload: bytes, count: int) -> None:
            try:
                await client.publish(self.topics.taps(self.gate_id), payload, qos=1)
                self.published += count
            except aiomqtt.MqttError:
                pass  # the connection is going; the journal still has the taps for the next one
            finally:
                in_flight.release()

        while True:
            if (self.journal.pending_count() and time.monotonic() - self._last_progress > self.stall_s
                    and self._cursor >= self.final_seq()):
                log.info("gate %s: no commit for %.0f s, republishing from %d", self.gate_id, self.stall_s,
                         self.journal.committed_through)
                self._cursor = self.journal.committed_through
                self._last_progress = time.monotonic()
            pending = self.journal.pending(after=self._cursor, limit=self.window * self.batch_max,
                                           through=self.final_seq())
            if not pending:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                continue
            # Only what is already pending is grouped: a lone tap leaves at once, never waits for company.
            for start in range(0, len(pending), self.batch_max):
                group = pending[start:start + self.batch_max]
                await in_flight.acquire()
                payload = encode_taps([tap for _, tap in group])
                task = asyncio.get_running_loop().create_task(publish(payload, len(group)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self._cursor = max(self._cursor, group[-1][0])

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await self.publish_status()

    async def publish_status(self) -> None:
        client = self._client
        if client is None:
            return
        table = self.state.fare_table
        status = GateStatus(
            gate_id=self.gate_id, state=GateState.ONLINE, time=datetime.now(UTC), mode=self.state.mode,
            fare_table_version=table.version if table is not None else 0,
            denylist_version=self.state.denylist.version, actions_version=self.state.actions_version,
            last_seq=self.journal.last_seq, journal_pending=self.journal.pending_count(), software=SOFTWARE,
            **(self.extra_status() if self.extra_status else {}),
        )
        await client.publish(self.topics.status(self.gate_id), encode(status), qos=1, retain=True)

    async def publish_status_soon(self) -> None:
        """A status outside the heartbeat (an alarm): skipped quietly while the broker is away."""
        with contextlib.suppress(aiomqtt.MqttError):
            await self.publish_status()

    async def _ask_snapshot(self, kind: UpdateKind, have: int) -> None:
        if self._client is None:
            return
        request = SnapshotRequest(gate_id=self.gate_id, kind=kind, have_version=have, time=datetime.now(UTC))
        await self._client.publish(self.topics.request(self.gate_id), encode(request), qos=1)

    # ---------------------------------------------------------------------------- receiving
    async def _on_message(self, topic: str, payload: bytes) -> None:
        t = self.topics
        try:
            if topic == t.committed(self.gate_id):
                committed = Committed.model_validate_json(payload)
                if committed.through_seq > self.journal.committed_through:
                    await asyncio.to_thread(self.journal.mark_committed, committed.through_seq)
                    self._last_progress = time.monotonic()
            elif topic == t.resend(self.gate_id):
                resend = ResendRequest.model_validate_json(payload)
                self._cursor = min(self._cursor, max(resend.from_seq - 1, self.journal.committed_through))
                self._wake.set()
            elif topic == t.command(self.gate_id):
                await self._updated(self.state.apply_command(GateCommand.model_validate_json(payload)),
                                    mode_changed=True)
            elif topic == t.denylist_delta:
                delta = DenyListDeltaMessage.model_validate_json(payload)
                result = await asyncio.to_thread(self.state.apply_denylist_delta, delta)
                await self._updated(result, UpdateKind.DENYLIST, self.state.denylist.version)
            elif topic == t.denylist_snapshot:
                snapshot = DenyListSnapshotMessage.model_validate_json(payload)
                result = await asyncio.to_thread(self.state.apply_denylist_snapshot, snapshot)
                await self._updated(result, UpdateKind.DENYLIST, self.state.denylist.version)
            elif topic == t.fare_table:
                table = FareTableMessage.model_validate_json(payload)
                current = self.state.fare_table.version if self.state.fare_table else 0
                await self._updated(self.state.apply_fare_table(table), UpdateKind.FARE_TABLE, current)
            elif topic == t.actions:
                await self._updated(self.state.apply_actions(ActionListMessage.model_validate_json(payload)))
        except ValidationError as exc:
            self.rejected_updates += 1
            log.warning("gate %s: malformed message on %s refused: %s", self.gate_id, topic,
                        exc.errors()[0].get("msg") if exc.errors() else exc)
            if topic == t.denylist_delta:
                await self._ask_snapshot(UpdateKind.DENYLIST, self.state.denylist.version)

    async def _updated(self, result: UpdateResult, kind: UpdateKind | None = None, have: int = 0,
                       mode_changed: bool = False) -> None:
        log.info("gate %s: %s %s", self.gate_id, result.outcome.value, result.detail)
        if result.outcome is Outcome.REFUSED:
            self.rejected_updates += 1
            if kind is not None:
                await self._ask_snapshot(kind, have)
        elif result.outcome is Outcome.APPLIED:
            if mode_changed and self.on_mode is not None:
                await self.on_mode()
            await self.publish_status()
