"""Lightweight gates at the MQTT level, hundreds to an event loop: the city bench's and tests' gates.

Each gate has its own MQTT connection and login (to its station server, under the station's per-gate
ACL), as a real gate does, but no serial hardware and no fare decision: its taps are the simulator's
synthetic ones (faregate.simgate.tap_payload, MACed under the gate's key). What it does as a real gate
(gate/uplink.py) does:

- taps are journaled in memory and published from the journal, a lone tap at once, several as arrays of
  at most `batch_max`; they stay until the backend's signed `Committed` covers them; a `ResendRequest`
  republishes its range; when no ack has moved for `stall_s` everything uncommitted goes again
  (with `stall_max_s` above `stall_s`, as the real gate's `[mqtt] stall_max_s`: the wait doubles after
  each replay that brought no ack, up to `stall_max_s`, and starts again at `stall_s` on an ack);
- a retained, MACed `GateStatus` on connect and every `status_s` (60 s), the last will "offline";
- every downlink message is verified against the backend's public key (protocol.mqtt.Verifier) before
  it is used; deny-list deltas apply only on their base version with the checksum checked (fare_core,
  all or nothing), snapshots replace the list when newer and their checksum matches, and a verified
  delta that cannot be applied makes the gate ask for a snapshot (SnapshotRequest, MACed).

As the real gate, it keeps the signed deny-list reference (the beacon) and takes the retained snapshot
only while the reference says it is behind (protocol.mqtt.follow): a block costs a current gate its
delta and a reference, never the whole list.

Two differences from gate/uplink.py, to keep the simulator's CPU for what it measures. Each gate speaks
MQTT through faregate.city.leanmqtt, not aiomqtt: its own connection, login, will, subscriptions and
PUBACKs as before, at a seventh of the cost a message (measured there). And the messages every
gate gets alike (delta, snapshot, reference) are parsed and their signatures checked once per distinct
payload in the simulating process (`SharedDownlink`), not once per gate; each gate still decides and
applies on its own. On 2 shared cores, 400 gates a process each parsing and verifying the same delta
made the last gate's apply wait most of a second behind the others; a real gate does its own check on
its own CPU (gate/uplink.py). A forged message is refused by every gate it reaches, as before.

When each deny-list version was applied is recorded (time.monotonic(), one clock for every process on
the machine), so the bench can measure a block's propagation from the operator's call to the last gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from pydantic import ValidationError

import fare_core
from faregate.city.leanmqtt import LeanMqtt, LinkError, Will
from faregate.simgate import SimGate
from protocol.mqtt import (
    Committed,
    DenyListDeltaMessage,
    DenyListSnapshotMessage,
    DenyListSnapshotRef,
    GateState,
    GateStatus,
    Payload,
    ResendRequest,
    SnapshotRequest,
    Topics,
    UpdateKind,
    Verifier,
    encode_taps,
    encode_with_mac,
)
from protocol.mqtt.auth import AuthError
from protocol.mqtt.follow import DELTA_GRACE_S, SnapshotNeed, Take

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Payload)


class SharedDownlink:
    """The backend's messages every gate of a process gets alike, parsed and verified once per distinct
    payload (the last `keep`), for every gate holding the same Verifier; a refusal is remembered too."""

    _by_verifier: ClassVar[weakref.WeakKeyDictionary[Verifier, SharedDownlink]] = weakref.WeakKeyDictionary()

    def __init__(self, verifier: Verifier, keep: int = 64) -> None:
        self.verifier = verifier
        self.keep = keep
        self._seen: OrderedDict[tuple[str, bytes], Payload | Exception] = OrderedDict()
        self.checks = 0  # parses and signature checks actually made

    @classmethod
    def of(cls, verifier: Verifier) -> SharedDownlink:
        shared = cls._by_verifier.get(verifier)
        if shared is None:
            shared = cls._by_verifier[verifier] = cls(verifier)
        return shared

    def take(self, model: type[M], payload: bytes) -> M:
        """`payload` as a verified `model`; raises the ValidationError or AuthError it raised first."""
        key = (model.__name__, payload)
        found = self._seen.get(key)
        if found is None:
            self.checks += 1
            try:
                found = model.model_validate_json(payload)
                self.verifier.check(found)
            except (ValidationError, AuthError) as exc:
                found = exc
            self._seen[key] = found
            while len(self._seen) > self.keep:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(key)
        if isinstance(found, Exception):
            raise found
        return found  # type: ignore[return-value]


@dataclass
class GateReport:
    """What one gate did, sent back to the bench's main process (plain values, picklable)."""

    gate_id: str
    made: int
    committed: int
    publishes: int
    connects: int
    refused: int
    snapshot_requests: int
    denylist_version: int
    statuses: int = 0
    snapshot_subscriptions: int = 0  # times it took the retained snapshot (behind the reference)
    applied: dict[int, float] = field(default_factory=dict)  # deny-list version -> monotonic time
    received: dict[int, float] = field(default_factory=dict)  # when that version's message came in


class CityGate:
    """One gate: journal, uplink and deny-list, on its own MQTT connection to its station (leanmqtt)."""

    def __init__(
        self,
        station_id: int,
        gate_no: int,
        *,
        host: str,
        port: int,
        password: str | None,
        topics: Topics,
        verifier: Verifier,
        stall_s: float = 10.0,
        stall_max_s: float = 0.0,
        batch_max: int = 50,
        keepalive: int = 30,
        status_s: float = 60.0,
    ) -> None:
        self.sim = SimGate(station_id, gate_no, batch_max=batch_max)  # journal and committed seq
        self.id = self.sim.id
        self.host, self.port, self.password = host, port, password
        self.topics = topics
        self.verifier = verifier
        self.downlink = SharedDownlink.of(verifier)
        self.snapshot_need = SnapshotNeed()
        self.snapshot_subscriptions = 0
        self._grace: asyncio.TimerHandle | None = None
        self.stall_s = stall_s
        self.stall_max_s = stall_max_s
        self._stall_now = stall_s
        self.keepalive = keepalive
        self.status_s = status_s
        self.statuses = 0
        self.denylist = fare_core.DenyList([], version=0)
        self.applied: dict[int, float] = {}
        self.received: dict[int, float] = {}
        self.refused = 0
        self.snapshot_requests = 0
        self.publishes = 0
        self.connects = 0
        self.connected = asyncio.Event()
        self._cursor = 0  # the last seq handed to the broker in this connection
        self._wake = asyncio.Event()
        self._last_progress = time.monotonic()
        self._client: LeanMqtt | None = None

    # ------------------------------------------------------------------------------------ taps
    def tap(self) -> None:
        """One tap: journaled now, published as soon as the link allows."""
        self.sim.synthetic_taps(1)
        self._wake.set()

    def all_committed(self) -> bool:
        return self.sim.committed >= self.sim.seq

    def report(self) -> GateReport:
        return GateReport(self.id, self.sim.seq, self.sim.committed, self.publishes, self.connects,
                          self.refused, self.snapshot_requests, self.denylist.version, self.statuses,
                          self.snapshot_subscriptions, dict(self.applied), dict(self.received))

    # ------------------------------------------------------------------------------ connection
    async def run(self, stop: asyncio.Event) -> None:
        """Connect (again after every loss, with back-off) until `stop` is set."""
        delay = 0.2
        while not stop.is_set():
            try:
                await self._session(stop)
                delay = 0.2
            except LinkError as exc:
                log.debug("gate %s: %s", self.id, exc)
            finally:
                self.connected.clear()
                self._client = None
                if self._grace is not None:
                    self._grace.cancel()
                    self._grace = None
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
                delay = min(delay * 2, 5.0)

    async def _session(self, stop: asyncio.Event) -> None:
        t = self.topics
        offline = encode_with_mac(GateStatus(gate_id=self.id, state=GateState.OFFLINE), self.sim.mac_key)
        client = await LeanMqtt.open(
            self.host, self.port, client_id=f"citygate-{t.prefix}-{self.id}", on_message=self.on_message,
            will=Will(t.status(self.id), offline, qos=1, retain=True),
            username=self.id if self.password else None, password=self.password, keepalive=self.keepalive)
        tasks: set[asyncio.Future[Any]] = set()
        try:
            self._client = client
            self.connects += 1
            # before the SUBSCRIBE: its retained reference is handled as it arrives, ahead of the SUBACK
            behind = self.snapshot_need.at_connect(self.denylist.version)
            await client.subscribe([(t.committed(self.id), 1), (t.resend(self.id), 1),
                                    (t.denylist_delta, 1), (t.denylist_snapshot_ref, 1)])
            if behind:
                self._follow_snapshot()  # nothing if the reference already subscribed it
            self._cursor = self.sim.committed  # publish again everything not yet committed
            self._last_progress = time.monotonic()
            self.connected.set()
            works: tuple[Awaitable[Any], ...] = (self._publisher(client), self._heartbeat(client),
                                                 client.wait_closed(), stop.wait())
            tasks = {asyncio.ensure_future(work) for work in works}
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, LinkError):
                    await task
            client.close()

    async def _publisher(self, client: LeanMqtt) -> None:
        sim = self.sim
        while True:
            now = time.monotonic()
            stalled = now - self._last_progress > self._stall_now
            if sim.committed < sim.seq and self._cursor >= sim.seq and stalled:
                self._cursor = sim.committed  # as gate/uplink.py: no ack for stall_s, send it all again
                if self.stall_max_s > self.stall_s:
                    self._stall_now = min(self._stall_now * 2, self.stall_max_s)
                self._last_progress = now
            if self._cursor >= sim.seq:
                self._wake.clear()
                # asleep until a tap, a resend request, or the stall timer of what is not yet committed
                stall_in = self._last_progress + self._stall_now - now if sim.committed < sim.seq else None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if stall_in is None else max(0.05, stall_in)):
                        await self._wake.wait()
                continue
            first = max(self._cursor, sim.committed) + 1
            last = min(sim.seq, first + sim.batch_max - 1)
            await client.publish(self.topics.taps(self.id), encode_taps(sim.journal[first - 1 : last]), qos=1)
            self.publishes += 1
            self._cursor = max(self._cursor, last)

    async def _heartbeat(self, client: LeanMqtt) -> None:
        """The retained status, as a gate sends it: on connect, then every `status_s` (MACed)."""
        while True:
            await self.publish_status(client)
            await asyncio.sleep(self.status_s)

    async def publish_status(self, client: LeanMqtt) -> None:
        status = GateStatus(gate_id=self.id, state=GateState.ONLINE, time=datetime.now(UTC),
                            denylist_version=self.denylist.version, last_seq=self.sim.seq,
                            journal_pending=self.sim.uncommitted, software="faregate-citygate/0.1",
                            auth_refused=self.refused)
        await client.publish(self.topics.status(self.id), encode_with_mac(status, self.sim.mac_key), qos=1,
                             retain=True)
        self.statuses += 1

    # ------------------------------------------------------------------------------- downlink
    def on_message(self, topic: str, payload: bytes) -> None:
        arrived = time.monotonic()
        t = self.topics
        try:
            if topic == t.committed(self.id):
                ack = Committed.model_validate_json(payload)
                self.verifier.check(ack)
                if ack.gate_id != self.id or ack.through_seq > self.sim.seq:
                    raise AuthError(f"ack through {ack.through_seq} for {ack.gate_id}")
                if ack.through_seq > self.sim.committed:
                    self.sim.committed = ack.through_seq
                    self._last_progress = time.monotonic()
                    self._stall_now = self.stall_s
            elif topic == t.resend(self.id):
                resend = ResendRequest.model_validate_json(payload)
                self.verifier.check(resend)
                if resend.gate_id != self.id:
                    raise AuthError(f"resend for {resend.gate_id}")
                self._cursor = min(self._cursor, max(resend.from_seq - 1, self.sim.committed))
                self._wake.set()
            elif topic == t.denylist_delta:
                delta = self.downlink.take(DenyListDeltaMessage, payload)
                if delta.version <= self.denylist.version:
                    return
                self.received.setdefault(delta.version, arrived)
                try:
                    self.denylist.apply_delta(fare_core.DenyListDelta(
                        version=delta.version, base_version=delta.base_version, add=tuple(delta.add),
                        remove=tuple(delta.remove), checksum=delta.checksum))
                except (fare_core.DenyListError, ValueError, TypeError):
                    self.snapshot_need.announced(delta.version)
                    self._ask_snapshot()
                else:
                    self.applied[delta.version] = time.monotonic()
                self._follow_snapshot()
            elif topic == t.denylist_snapshot:
                snapshot = self.downlink.take(DenyListSnapshotMessage, payload)
                if snapshot.version > self.denylist.version:
                    self.received.setdefault(snapshot.version, arrived)
                    candidate = fare_core.DenyList(snapshot.card_ids, version=snapshot.version)
                    if candidate.checksum != snapshot.checksum:
                        self._ask_snapshot()
                        return
                    self.denylist = candidate
                    self.applied[snapshot.version] = time.monotonic()
                self._follow_snapshot()
            elif topic == t.denylist_snapshot_ref:
                ref = self.downlink.take(DenyListSnapshotRef, payload)
                take = self.snapshot_need.on_ref(ref.version, ref.size, self.denylist.version)
                if take is Take.SUBSCRIBE:
                    self._follow_snapshot()
                elif take is Take.SUBSCRIBE_AFTER_GRACE and self._grace is None:
                    self._grace = asyncio.get_running_loop().call_later(DELTA_GRACE_S, self._after_grace)
        except (AuthError, ValidationError, json.JSONDecodeError):
            self.refused += 1  # unverified: never applied, never answered with a request

    def _follow_snapshot(self) -> None:
        """On the snapshot topic while behind the newest announced version, off it once current."""
        client = self._client
        if client is None:
            return
        change = self.snapshot_need.step(self.denylist.version)
        with contextlib.suppress(LinkError):  # gone: the next connection starts from at_connect
            if change is True:
                self.snapshot_subscriptions += 1
                client.subscribe_nowait([(self.topics.denylist_snapshot, 1)])
            elif change is False:
                client.unsubscribe_nowait([self.topics.denylist_snapshot])

    def _after_grace(self) -> None:
        self._grace = None
        self._follow_snapshot()

    def _ask_snapshot(self) -> None:
        client = self._client
        if client is None:
            return
        self.snapshot_requests += 1
        request = SnapshotRequest(gate_id=self.id, kind=UpdateKind.DENYLIST,
                                  have_version=self.denylist.version, time=datetime.now(UTC))
        with contextlib.suppress(LinkError):
            client.publish_nowait(self.topics.request(self.id), encode_with_mac(request, self.sim.mac_key))


async def run_gates(gates: list[CityGate], stop: asyncio.Event, connect_spread_s: float = 0.0) -> None:
    """Run `gates` until `stop`; connections are spread over `connect_spread_s` (no connect storm)."""

    async def one(index: int, gate: CityGate) -> None:
        if connect_spread_s and gates:
            await asyncio.sleep(connect_spread_s * index / len(gates))
        await gate.run(stop)

    await asyncio.gather(*(one(i, gate) for i, gate in enumerate(gates)))

