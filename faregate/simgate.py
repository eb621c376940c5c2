"""The simulated gate at the MQTT level, for tests and benchmarks: taps made as a gate makes them, a
journal published within a window, the backend's acks, resend requests and updates taken in.

The real gate (gate.controller with gate.uplink, run on simulated hardware by faregate.station) costs a
serial reader, an event loop and an aiomqtt connection per gate: right for a station, too heavy for a
benchmark of thousands of gates, and unable to make the one dishonest tap a reconciliation test needs.
Here a gate is plain state (SimGate) and any number of them share one paho client (SimUplink), which
the caller's own thread drives with step() (the ingest benchmark: handing every publish to a network
thread costs about two thirds of the throughput in GIL hand-offs) or one thread per uplink drives after
start() (tests, which publish from other threads).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import json
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

import fare_core
from backend.mqtt import BrokerAddress
from fare_core import DEVELOPMENT_SAM_KEY
from fare_core.artefact import pack
from fare_core.compiler import compile_rules
from fare_core.reasons import Direction, GateMode, Reason
from fare_core.record import CardRecord
from fare_core.rules import load_rules
from protocol.mqtt import (
    DEVELOPMENT_UPLINK_MASTER_KEY,
    TapMessage,
    Topics,
    derive_gate_key,
    encode,
    encode_taps,
    gate_id,
    tap_id,
    with_mac,
)
from protocol.mqtt.auth import mac_json

TINY = Path(fare_core.__file__).with_name("examples") / "tiny.toml"

# --- making taps -------------------------------------------------------------------------------------


@functools.cache
def tiny_artefact(version: int = 1) -> bytes:
    """The packed fare table of fare_core's tiny example (cached: compiling it costs milliseconds)."""
    return pack(compile_rules(load_rules(TINY), version, created_at=1_700_000_000))


def new_phone(card_id: int, balance: int = 5000, key: bytes = DEVELOPMENT_SAM_KEY) -> bytes:
    """A fresh phone wallet under `key` (the development key every simulator and test uses)."""
    record = CardRecord(card_id=card_id, balance=balance, counter=1)
    return bytes(fare_core.new_wallet(record, fare_core.Sam(key)))


@dataclass
class FareState:
    """What a gate decides with: fare table, deny-list, SAM key. Gates may share one (a station's do)."""

    table: Any
    denylist: Any
    sam: Any

    @classmethod
    def tiny(cls, version: int = 1, key: bytes = DEVELOPMENT_SAM_KEY) -> FareState:
        return cls(
            fare_core.FareTable.from_bytes(tiny_artefact(version)),
            fare_core.DenyList([], version=0),
            fare_core.Sam(key),
        )


@functools.cache
def development_mac_key(station: int, gate_no: int) -> bytes:
    """A simulated gate's uplink MAC key: derived from the development master key, as the backend's
    defaults derive it (docs/security.md)."""
    return derive_gate_key(DEVELOPMENT_UPLINK_MASTER_KEY, gate_id(station, gate_no))


def tap_payload(station: int, gate_no: int, seq: int, key: bytes | None = None) -> bytes:
    """One valid tap as a gate encodes it (compact JSON, its MAC last), plausible and cheap to build:
    for benchmarks, where fare_core's decision would cost more than the ingest being measured. The
    JSON is pydantic's own serialisation of the TapMessage, so the MAC verifies (tested)."""
    card = 0x1000_0000_0000_0000 + station * 256 + gate_no
    body = json.dumps(
        {
            "schema_version": 1,
            "tap_id": tap_id(station, gate_no, seq),
            "station_id": station,
            "gate_no": gate_no,
            "seq": seq,
            "card_id": f"{card:016x}",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_795_000_000 + seq)),
            "direction": seq % 2,
            "mode": 0,
            "allowed": True,
            "reason": 0,
            "flags": 0,
            "fare": 200,
            "balance_before": 100_000,
            "balance_after": 99_800,
            "counter_before": seq,
            "counter_after": seq + 1,
            "wallet_before": "00" * 128,
            "fare_table_version": 1,
            "denylist_version": 0,
            "min_counter": 0,
            "action_id": None,
            "topup_applied": 0,
            "latency_us": 180,
        },
        separators=(",", ":"),
    ).encode()
    return mac_json("TapMessage", body, key or development_mac_key(station, gate_no))


class SimGate:
    """One gate: makes taps, journals them encoded (journal[seq - 1]), and holds its uplink state.

    `window` bounds the taps published and not yet committed by the backend (its end-to-end ack);
    `batch_max` is the most taps one message carries when several are waiting, as a gate's backlog goes.
    """

    def __init__(
        self,
        station_id: int,
        gate_no: int = 1,
        *,
        fare: FareState | None = None,
        window: int = 200,
        batch_max: int = 50,
        mac_key: bytes | None = None,
    ) -> None:
        self.station_id = station_id
        self.gate_no = gate_no
        self.id = gate_id(station_id, gate_no)
        self.mac_key = mac_key or development_mac_key(station_id, gate_no)  # its taps carry its MAC
        self.window = window
        self.batch_max = batch_max
        self._fare = fare
        self.journal: list[bytes] = []
        self.committed = 0  # the backend has stored every tap through this seq
        self.next_seq = 1  # the next journal seq the uplink publishes

    @property
    def fare(self) -> FareState:
        """Made on first use, so gates that only carry synthetic taps never compile a fare table."""
        if self._fare is None:
            self._fare = FareState.tiny()
        return self._fare

    @property
    def seq(self) -> int:
        """The last seq this gate has made."""
        return len(self.journal)

    def tap(
        self,
        wallet: bytes,
        card_id: int,
        direction: Direction,
        when: datetime,
        *,
        topup: int = 0,
        action_id: int | None = None,
        seq: int | None = None,
        **lie: Any,
    ) -> tuple[TapMessage, bytes]:
        """Decide like a gate with fare_core; returns the report (journaled) and the wallet as rewritten.

        `topup` is a pending action the gate applies (its id reported as `action_id`). `seq` reports again
        under an earlier number, replacing that journal entry (a replaying or lying gate); `lie`
        overrides fields of the report (a dishonest gate).
        """
        fare = self.fare
        context = fare_core.Tap(
            card_id, self.station_id, direction, int(when.timestamp()), gate_no=self.gate_no, topup=topup,
            action_id=action_id or 0,
        )
        decision = fare_core.decide(wallet, context, fare.table, fare.denylist, fare.sam)
        written = decision.record is not None
        number = self.seq + 1 if seq is None else seq
        values: dict[str, Any] = {
            "tap_id": tap_id(self.station_id, self.gate_no, number),
            "station_id": self.station_id,
            "gate_no": self.gate_no,
            "seq": number,
            "card_id": card_id,
            "time": when,
            "direction": direction,
            "mode": GateMode.NORMAL,
            "allowed": bool(decision.allowed),
            "reason": Reason(decision.reason),
            "flags": int(decision.flags),
            "fare": int(decision.fare),
            "balance_before": int(decision.balance_before),
            "balance_after": int(decision.balance_after),
            # decide() reports the counter it wrote, or the one it read when it wrote nothing
            "counter_before": int(decision.counter) - 1 if written else int(decision.counter),
            "counter_after": int(decision.counter),
            "wallet_before": wallet.hex(),
            "fare_table_version": int(fare.table.version),
            "denylist_version": int(fare.denylist.version),
            "min_counter": 0,
            "action_id": action_id if written and decision.topup else None,
            "topup_applied": int(decision.topup),
            "latency_us": 100,
        }
        values.update(lie)
        message = with_mac(TapMessage(**values), self.mac_key)
        self.journal_tap(encode(message), seq=number)
        if decision.record is None:
            return message, wallet
        return message, bytes(fare_core.apply_write(wallet, decision.slot, decision.record))

    def journal_tap(self, payload: bytes, seq: int | None = None) -> int:
        """Journal an encoded tap as the next seq, or in place of an earlier one; returns its seq."""
        if seq is None or seq == self.seq + 1:
            self.journal.append(payload)
            return self.seq
        if not 1 <= seq <= self.seq:
            raise ValueError(f"gate {self.id}: seq {seq} is neither made nor the next one")
        self.journal[seq - 1] = payload
        return seq

    def synthetic_taps(self, count: int) -> None:
        """Journal `count` cheap plausible taps (tap_payload), as the benchmarks do before their clock."""
        first = self.seq + 1
        seqs = range(first, first + count)
        self.journal.extend(tap_payload(self.station_id, self.gate_no, seq, self.mac_key) for seq in seqs)

    def rewind(self, seq: int | None = None) -> None:
        """Publish again from `seq` (default: the first tap not committed), as after a reconnect."""
        self.next_seq = min(self.next_seq, max(self.committed + 1, seq or 0))

    @property
    def uncommitted(self) -> int:
        """Taps published or waiting that the backend has not yet confirmed stored."""
        return self.seq - self.committed


# --- the MQTT side -----------------------------------------------------------------------------------


class Received(NamedTuple):
    topic: str
    payload: bytes
    retain: bool


@dataclass
class _Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    sent: concurrent.futures.Future[mqtt.MQTTMessageInfo] = field(default_factory=concurrent.futures.Future)


class SimUplink:
    """Any number of SimGates on one paho client: each gate's journal goes out within its window, as
    arrays of at most its `batch_max` taps; Committed acks advance it, ResendRequests republish the asked
    range, and when no ack has moved for `stall_s` every gate publishes again from its last commit.

    By default the gates subscribe to what a real gate does: their committed, resend and command topics
    and the shared deny-list, fare-table and action topics; `subscribe` replaces that list (a client
    playing the backend, or a gate testing its ACL). With `record` every message received is kept in
    `received` (tests); without, only the uplink state changes (benchmarks run for millions of taps).
    All paho calls happen on one thread: the caller's (connect(), step(), run()) or the uplink's own
    after start(); publish() may then be called from any thread.
    """

    SUBSCRIBE_CHUNK = 100  # topic filters in one SUBSCRIBE packet

    def __init__(
        self,
        url: str,
        topics: Topics,
        gates: Iterable[SimGate] = (),
        *,
        version: str = "3.1.1",
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        will: tuple[str, bytes] | None = None,
        subscribe: Sequence[str] | None = None,
        record: bool = True,
        stall_s: float = 5.0,
        keepalive: int = 30,
    ) -> None:
        self.topics = topics
        self.gates = {gate.id: gate for gate in gates}
        self._order = list(self.gates.values())
        self.address = BrokerAddress.parse(url)
        self.record = record
        self.stall_s = stall_s
        self.keepalive = keepalive
        self.received: list[Received] = []
        self.publishes = 0  # tap messages published (resends included)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.refused: Any = None  # the CONNACK's reason code when the broker refused the connection
        self._subscriptions = list(subscribe) if subscribe is not None else self._gate_subscriptions()
        self._suback_due = 0
        self._resends: list[tuple[SimGate, int, int]] = []
        self._committed_total = sum(gate.committed for gate in self._order)
        self._progress = (self._committed_total, time.monotonic())
        self._lock = threading.Lock()  # guards `received` against readers on other threads
        self._outbox: collections.deque[_Publish] = collections.deque()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._last_reconnect = 0.0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"simgate-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311,
        )
        username = username or self.address.username
        if username:
            self.client.username_pw_set(username, password or self.address.password)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        # No paho in-flight limit: each gate's window bounds what is in flight, and with a limit set
        # paho scans every queued message on each PUBACK (that made the simulator the bottleneck).
        self.client.max_inflight_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _gate_subscriptions(self) -> list[str]:
        t = self.topics
        shared = [t.denylist_delta, t.denylist_snapshot, t.fare_table, t.actions] if self.gates else []
        return [f(gate) for gate in self.gates for f in (t.committed, t.resend, t.command)] + shared

    # ------------------------------------------------------------------------------ connection
    def connect(self, timeout: float = 15.0) -> None:
        """Connect and subscribe, driving paho from this thread; raises if refused or too slow."""
        self.client.connect(self.address.host, self.address.port, keepalive=self.keepalive)
        deadline = time.monotonic() + timeout
        while not self.subscribed.is_set():
            self.client.loop(0.05)
            if self.refused is not None:
                raise ConnectionRefusedError(f"broker refused the simulated gates: {self.refused}")
            if time.monotonic() > deadline:
                raise TimeoutError("simulated gates could not subscribe")

    def start(self) -> None:
        """Connect in the background: one thread runs this uplink (not one per gate) until close()."""
        self.client.connect_async(self.address.host, self.address.port, keepalive=self.keepalive)
        self._thread = threading.Thread(target=self._run_thread, name="simgate-uplink", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Until the subscriptions are acknowledged (after start())."""
        if not self.subscribed.wait(timeout):
            raise AssertionError(f"simulated gates not subscribed (refused: {self.refused})")

    def _run_thread(self) -> None:
        with contextlib.suppress(OSError):  # else step() asks again
            self.client.reconnect()
        while not self._closing:
            self.step(0.01)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        if reason.is_failure:
            self.refused = reason
            return
        self.connected.set()
        for gate in self._order:  # as a gate does after every connect: from the last commit
            gate.rewind()
        filters = self._subscriptions
        self._suback_due = -(-len(filters) // self.SUBSCRIBE_CHUNK)
        if not filters:
            self.subscribed.set()
        for start in range(0, len(filters), self.SUBSCRIBE_CHUNK):
            client.subscribe([(topic, 1) for topic in filters[start : start + self.SUBSCRIBE_CHUNK]])

    def _on_subscribe(self, *_: Any) -> None:
        self._suback_due -= 1
        if self._suback_due <= 0:
            self.subscribed.set()

    def vanish(self) -> None:
        """Drop the connection without DISCONNECT, as a gate losing power does (the will goes out)."""
        self._stop_thread()
        self.connected.clear()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self._stop_thread()
        if self.connected.is_set():
            self.client.disconnect()  # written at once: no paho thread, so no loop needed
        self.connected.clear()

    def _stop_thread(self) -> None:
        self._closing = True
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    # ------------------------------------------------------------------------------ receiving
    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        topic, payload = message.topic, bytes(message.payload)
        if self.record:
            with self._lock:
                self.received.append(Received(topic, payload, bool(message.retain)))
        if not topic.endswith(("/committed", "/resend")):
            return
        try:
            gate = self.gates.get(Topics.gate_of(topic))
            if gate is None:
                return  # another process's gate, or a client with no gates watching
            body = json.loads(payload)
            if topic.endswith("/committed"):
                through = int(body["through_seq"])
                if through > gate.committed:
                    self._committed_total += through - gate.committed
                    gate.committed = through
                    gate.next_seq = max(gate.next_seq, through + 1)
            else:
                self._resends.append((gate, int(body["from_seq"]), int(body["to_seq"])))
        except (ValueError, TypeError, KeyError):
            pass  # not a valid ack: the gate ignores it, as a real one refuses it

    def messages(self, topic: str) -> list[bytes]:
        """The payloads received on `topic`, oldest first (with `record`)."""
        with self._lock:
            return [m.payload for m in self.received if m.topic == topic]

    # ------------------------------------------------------------------------------ publishing
    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, timeout: float = 10.0
    ) -> None:
        """Publish anything (a malformed tap, a status, another gate's topic); waits for the broker's ack."""
        if self._thread is not None and threading.current_thread() is not self._thread:
            request = _Publish(topic, payload, qos, retain)
            self._outbox.append(request)
            info = request.sent.result(timeout)
            info.wait_for_publish(timeout)
            if not info.is_published():
                raise TimeoutError(f"no PUBACK for {topic} within {timeout} s")
            return
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        deadline = time.monotonic() + timeout
        while not info.is_published():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no PUBACK for {topic} within {timeout} s")
            self.client.loop(0.01)

    def step(self, timeout: float = 0.0) -> bool:
        """One turn: publish what the windows allow, then paho's network I/O for up to `timeout` s.
        Returns whether taps went out."""
        sent = self.pump()
        self._network(timeout)
        return sent

    def _network(self, timeout: float) -> None:
        if self.client.loop(timeout) in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            return
        self.connected.clear()  # lost (or refused): the broker is asked again twice a second at most
        if self._closing:
            return
        time.sleep(max(timeout, 0.01))
        if self.refused is None and time.monotonic() - self._last_reconnect > 0.5:
            self._last_reconnect = time.monotonic()
            with contextlib.suppress(OSError):
                self.client.reconnect()

    def pump(self) -> bool:
        """Send what each gate's window allows, answer resend requests, replay after a stall."""
        while self._outbox:
            request = self._outbox.popleft()
            request.sent.set_result(
                self.client.publish(request.topic, request.payload, qos=request.qos, retain=request.retain)
            )
        if not self.connected.is_set():
            return False
        sent = False
        for gate in self._order:
            first, last = gate.next_seq, min(gate.seq, gate.committed + gate.window)
            if first <= last:
                self._send(gate, first, last)
                gate.next_seq = last + 1
                sent = True
        if self._resends:
            requests, self._resends = self._resends, []
            for gate, first, last in requests:
                last = min(last, gate.next_seq - 1)
                if max(first, gate.committed + 1) <= last:
                    self._send(gate, max(first, gate.committed + 1), last)
        self._check_stall()
        return sent

    def _send(self, gate: SimGate, first: int, last: int) -> None:
        """Taps first..last of a gate, in messages of at most its batch_max taps."""
        topic, batch = self.topics.taps(gate.id), gate.batch_max
        for start in range(first, last + 1, batch):
            group = gate.journal[start - 1 : min(last, start + batch - 1)]
            self.client.publish(topic, encode_taps(group), qos=1)
            self.publishes += 1
            if self.publishes % 64 == 0:  # let PUBACKs and acks in during a long burst
                self.client.loop(0)

    def _check_stall(self) -> None:
        total, since = self._progress
        now = time.monotonic()
        if self._committed_total != total:
            self._progress = (self._committed_total, now)
        elif now - since > self.stall_s:
            self._progress = (total, now)
            for gate in self._order:  # a gate's stall timer: replay what is not committed
                if gate.next_seq > gate.committed + 1:
                    gate.rewind()

    def all_committed(self) -> bool:
        return self._committed_total >= sum(gate.seq for gate in self._order)

    def run(self, timeout: float) -> float:
        """Drive from this thread until every journaled tap is committed or `timeout` s pass; returns
        the seconds it took."""
        start = time.perf_counter()
        target = sum(gate.seq for gate in self._order)
        while self._committed_total < target and time.perf_counter() - start <= timeout:
            self._network(0 if self.pump() else 0.005)
        return time.perf_counter() - start
