"""Store a batch of raw MQTT tap payloads in one transaction: valid taps by tap id, the rest dead-lettered.

A payload is one tap object or an array of them (a gate sending its backlog, docs/mqtt.md); each
element is validated and stored or dead-lettered on its own.

Idempotence is the primary key (tap_id, time): `INSERT ... ON CONFLICT (tap_id, time) DO NOTHING`
(TapInsert) stores a tap once however often it comes (its time is under its gate's MAC, so a tap sent
again has the same); the count of new rows tells new taps from duplicates. A tap whose seq is not above
its gate's highest stored one is first compared with what is stored under its id at any time
(_maybe_stored), so one tap id never gets two rows. In the same
transaction each touched gate's `committed_seq` advances to the highest seq with nothing missing at
or below it, so a Committed message published after the commit never promises a tap the database
does not hold.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pydantic_core
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import LargeBinary, Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from protocol.mqtt import MAX_TAPS_PER_MESSAGE, GateKeys, TapMessage, Topics, encode, parse_gate_id

from ..tables import AlarmRow, DeadLetterRow, GateRow, TapRow
from . import authn

MAX_REASON = 2000
# Larger than any valid tap message (MAX_TAPS_PER_MESSAGE taps of under 1 KiB each, compact JSON):
# refused before it is parsed, so a hostile payload costs its size once, not a parse.
MAX_TAP_PAYLOAD_BYTES = MAX_TAPS_PER_MESSAGE * 2048
DEAD_LETTER_PREFIX = 4096  # bytes of a dead-lettered payload kept; its size and SHA-256 cover the rest


@dataclass(frozen=True)
class RawMessage:
    """One message as it came off the broker (the MQTT message id is needed for the late ack)."""

    topic: str
    payload: bytes
    mid: int = 0
    qos: int = 1


@dataclass
class GateProgress:
    gate_id: str
    committed_seq: int
    highest_seq: int
    missing: list[tuple[int, int]]  # gaps above committed_seq, inclusive ranges


@dataclass
class BatchResult:
    received: int = 0  # taps (elements of tap arrays counted one by one)
    stored: int = 0  # taps new in the database
    duplicates: int = 0
    dead_lettered: int = 0
    gates: dict[str, GateProgress] = field(default_factory=dict)
    dead_by_gate: Counter[str] = field(default_factory=Counter)  # for the per-gate dead-letter alarm

    def add(self, other: BatchResult) -> None:
        """Fold in the result of a part of the same batch (stored one part at a time)."""
        self.received += other.received
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.dead_lettered += other.dead_lettered
        self.gates.update(other.gates)
        self.dead_by_gate.update(other.dead_by_gate)


def topic_gate(topic: str) -> str | None:
    """The gate a per-gate topic names, if it is a well-formed gate id (it is stored in a column)."""
    try:
        gate = Topics.gate_of(topic)
        parse_gate_id(gate)
    except ValueError:
        return None
    return gate


def dead_letter_row(topic: str, payload: bytes, reason: str, now: datetime) -> dict[str, Any]:
    """A dead_letters row: a bounded prefix of the payload with its full size and SHA-256, so a
    megabyte payload costs 4 KiB of the table and can still be recognised when it comes again."""
    return {
        "received_at": now,
        "topic": topic[:300],
        "gate_id": topic_gate(topic),
        "payload": payload[:DEAD_LETTER_PREFIX],
        "payload_size": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "reason": reason[:MAX_REASON],
    }


class TapInsert:
    """Many taps in one driver-level statement: one executemany on SQLite, one INSERT ... SELECT FROM
    unnest(arrays) on PostgreSQL, both ON CONFLICT (tap_id, time) DO NOTHING.

    Why not the ORM's Core insert: building and type-processing its parameters cost about 20 µs a
    tap, more than the database's own work. The columns' own bind processors (the UTC datetime
    type, booleans) are still applied, once per value, so the rows are exactly what Core would write.
    """

    def __init__(self, dialect: Dialect) -> None:
        table = cast(Table, TapRow.__table__)
        self.names = [column.name for column in table.columns]
        self.processors = [
            (index, processor)
            for index, column in enumerate(table.columns)
            if not isinstance(column.type, LargeBinary)  # both drivers take bytes as they are
            and (processor := column.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        ]
        columns = ", ".join(self.names)
        self.postgresql = dialect.name == "postgresql"
        if self.postgresql:
            arrays = ", ".join(
                f"${n}::{column.type.compile(dialect)}[]" for n, column in enumerate(table.columns, 1)
            )
            self.sql = (
                f"INSERT INTO {table.name} ({columns}) SELECT * FROM unnest({arrays}) "
                "ON CONFLICT (tap_id, time) DO NOTHING RETURNING tap_id"
            )
        else:
            marks = ", ".join("?" for _ in self.names)
            self.sql = (
                f"INSERT INTO {table.name} ({columns}) VALUES ({marks}) ON CONFLICT (tap_id, time) DO NOTHING"
            )

    async def __call__(self, session: AsyncSession, rows: Sequence[dict[str, Any]]) -> int:
        """Insert `rows` (tap_row dicts); returns how many were new."""
        values = [[row[name] for name in self.names] for row in rows]
        for index, processor in self.processors:
            done: dict[Any, Any] = {}  # a batch repeats its times and flags: convert each value once
            for row_values in values:
                value = row_values[index]
                if value not in done:
                    done[value] = processor(value)
                row_values[index] = done[value]
        connection = await session.connection()
        if self.postgresql:
            columns = tuple(list(column) for column in zip(*values, strict=True))
            result = await connection.exec_driver_sql(self.sql, columns)
            return len(result.fetchall())
        result = await connection.exec_driver_sql(self.sql, [tuple(v) for v in values])
        return int(result.rowcount)  # sqlite3 sums executemany's row counts; ignored rows add 0


_TAP_INSERTS: dict[str, TapInsert] = {}


def _tap_insert(session: AsyncSession) -> TapInsert:
    assert session.bind is not None, "the session factory is bound to the engine"
    dialect = session.bind.dialect
    if dialect.name not in _TAP_INSERTS:
        _TAP_INSERTS[dialect.name] = TapInsert(dialect)
    return _TAP_INSERTS[dialect.name]


def _insert(session: AsyncSession, entity: Any) -> Any:
    """A Core (not ORM-bulk) INSERT in the session's dialect, which has ON CONFLICT DO NOTHING."""
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(entity.__table__)


def tap_row(tap: TapMessage, received_at: datetime) -> dict[str, Any]:
    return {
        "tap_id": tap.tap_id,
        "gate_id": tap.gate_id,
        "station_id": tap.station_id,
        "gate_no": tap.gate_no,
        "seq": tap.seq,
        "card_id": f"{tap.card_id:016x}",
        "time": tap.time,
        "direction": int(tap.direction),
        "mode": int(tap.mode),
        "allowed": tap.allowed,
        "reason": int(tap.reason),
        "flags": tap.flags,
        "fare": tap.fare,
        "balance_before": tap.balance_before,
        "balance_after": tap.balance_after,
        "counter_before": tap.counter_before,
        "counter_after": tap.counter_after,
        "wallet_before": tap.wallet_bytes(),
        "fare_table_version": tap.fare_table_version,
        "denylist_version": tap.denylist_version,
        "min_counter": tap.min_counter,
        "action_id": tap.action_id,
        "topup_applied": tap.topup_applied,
        "latency_us": tap.latency_us,
        "received_at": received_at,
        "reconciled": None,
        "trip_id": None,
    }


@dataclass(frozen=True)
class Refused:
    """A payload, or one element of a tap array, that is not a valid tap, with the reason."""

    payload: bytes
    reason: str


_TAP_ARRAY = TypeAdapter(list[TapMessage])


def parse(message: RawMessage) -> list[TapMessage | Refused]:
    """Every tap a taps-topic payload carries (one object, or an array of them), each either valid or
    refused with its reason, so one bad element of an array is dead-lettered and the others stored."""
    return [tap for tap, _ in parse_raw(message)]


def parse_raw(message: RawMessage) -> list[tuple[TapMessage | Refused, bytes | None]]:
    """`parse`, each element with the exact bytes it was parsed from when it was parsed from bytes of
    its own (the MAC's fast path, authn.tap_refusals, checks the MAC over those bytes), else None.

    A gate's array is `[a,b,...]` joined by bare commas. It is cut on `},{` and each piece validated
    ON ITS OWN as a tap: when every piece is a valid tap, each is a complete JSON object, so the pieces
    are exactly the array's elements and each tap is bound to its own bytes. When the cut does not give
    one valid tap per piece (a `},{` inside a string or a nested array, whitespace between elements,
    a non-tap element), the array is parsed whole and no element gets bytes: each is verified on its
    re-serialised canonical form instead. Never the MAC of one piece for the tap parsed from another."""
    payload = bytes(message.payload)
    if len(payload) > MAX_TAP_PAYLOAD_BYTES:
        return [(Refused(payload, f"{len(payload)} bytes in one message; at most {MAX_TAP_PAYLOAD_BYTES}"),
                 None)]
    try:
        topic_gate = Topics.gate_of(message.topic)
    except ValueError as error:
        return [(Refused(payload, str(error)), None)]
    if payload.lstrip()[:1] != b"[":
        return [(_check_gate(_validate_one(payload), topic_gate), payload)]
    spans = _own_spans(payload)
    if spans is not None:
        return [(_check_gate(tap, topic_gate), raw) for tap, raw in spans]
    try:  # every element valid, validated in one pass
        taps: list[TapMessage | Refused] = list(_TAP_ARRAY.validate_json(payload))
    except ValidationError:
        try:  # pydantic-core's parser caps nesting (json.loads would raise RecursionError, not ValueError)
            elements = pydantic_core.from_json(payload)
        except ValueError as error:
            return [(Refused(payload, f"undecodable tap array: {error}"[:MAX_REASON]), None)]
        if isinstance(elements, list) and len(elements) > MAX_TAPS_PER_MESSAGE:  # refuse before the work
            return [(Refused(payload, f"{len(elements)} taps in one message; at most {MAX_TAPS_PER_MESSAGE}"),
                     None)]
        taps = [_validate_one(json.dumps(e, separators=(",", ":")).encode()) for e in elements]
    if not taps:
        return [(Refused(payload, "empty tap array"), None)]
    if len(taps) > MAX_TAPS_PER_MESSAGE:
        return [(Refused(payload, f"{len(taps)} taps in one message; at most {MAX_TAPS_PER_MESSAGE}"), None)]
    return [(_check_gate(tap, topic_gate), None) for tap in taps]


def _own_spans(payload: bytes) -> list[tuple[TapMessage, bytes]] | None:
    """A gate's compact array cut into its elements, each validated from its own bytes, or None when
    the cut does not yield one valid tap per piece (then the caller parses the array whole)."""
    if payload[:2] != b"[{" or payload[-2:] != b"}]":
        return None
    parts = payload[2:-2].split(b"},{")
    if len(parts) > MAX_TAPS_PER_MESSAGE:
        return None
    spans = []
    for part in parts:
        raw = b"{" + part + b"}"
        try:
            spans.append((TapMessage.model_validate_json(raw), raw))
        except ValidationError:
            return None
    return spans


def _validate_one(payload: bytes) -> TapMessage | Refused:
    try:
        return TapMessage.model_validate_json(payload)
    except ValidationError as error:
        return Refused(payload, f"invalid tap: {error}"[:MAX_REASON])


def _check_gate(tap: TapMessage | Refused, topic_gate: str) -> TapMessage | Refused:
    if isinstance(tap, TapMessage) and topic_gate != tap.gate_id:
        return Refused(
            tap.model_dump_json().encode(),
            f"tap of gate {tap.gate_id} published on the topic of gate {topic_gate}",
        )
    return tap


class TapStore:
    """Writes batches; one instance per ingest worker (stateless apart from the session factory)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], keys: GateKeys | None = None) -> None:
        self.sessions = sessions
        self.keys = keys or authn.gate_keys(None)  # the gates' MAC keys (development ones by default)

    async def store(self, messages: Sequence[RawMessage]) -> BatchResult:
        now = datetime.now(UTC)
        result = BatchResult()
        taps: dict[str, dict[str, Any]] = {}
        dead: list[dict[str, Any]] = []
        received = 0
        sent: dict[str, tuple[TapMessage, str]] = {}  # tap id -> the tap and its topic, for a conflict
        repeats: list[tuple[dict[str, Any], TapMessage, str]] = []  # an id seen twice in this batch
        forged: dict[str, int] = {}
        for message in messages:
            try:
                parsed_all = parse_raw(message)
            except Exception as error:  # parse() refuses what it knows; anything else is this message's
                reason = f"unparseable: {type(error).__name__}: {error}"
                parsed_all = [(Refused(bytes(message.payload), reason), None)]
            refusals = authn.tap_refusals(self.keys, parsed_all)  # the gates' MACs, each over its own bytes
            for (parsed, _), why in zip(parsed_all, refusals, strict=True):
                received += 1
                if isinstance(parsed, TapMessage) and why:
                    forged[parsed.gate_id] = forged.get(parsed.gate_id, 0) + 1  # dead-lettered and alarmed
                    parsed = Refused(encode(parsed), why)
                if isinstance(parsed, Refused):
                    dead.append(dead_letter_row(message.topic, parsed.payload, parsed.reason, now))
                    result.dead_by_gate[dead[-1]["gate_id"] or "?"] += 1
                elif parsed.tap_id not in sent:
                    sent[parsed.tap_id] = parsed, message.topic
                    taps[parsed.tap_id] = tap_row(parsed, now)
                else:  # the same tap id twice in one batch: stored once, compared below
                    repeats.append((tap_row(parsed, now), parsed, message.topic))
        result.received = received
        result.duplicates = received - len(dead) - len(taps)
        async with self.sessions.begin() as session:
            checked: set[str] = set()  # tap ids already compared with what is stored under them
            if taps:  # (tap_id, time) is the key: one id at another time must be caught before the insert
                early = await _maybe_stored(session, taps)
                checked = {row["tap_id"] for row in early}
                for row in await authn.conflicts(session, early, now) if early else []:
                    tap, topic = sent[row["tap_id"]]
                    del taps[row["tap_id"]]
                    dead.append(dead_letter_row(topic, encode(tap), f"tap_conflict: {row['tap_id']}", now))
                    result.dead_by_gate[row["gate_id"]] += 1
            if taps:
                result.stored = await _tap_insert(session)(session, list(taps.values()))
                result.duplicates += len(taps) - result.stored
            if result.stored < len(taps) or repeats:  # a duplicate must be the same tap, not another
                candidates = [(row, *sent[tap]) for tap, row in taps.items() if tap not in checked] + repeats
                clashes = await authn.conflicts(session, [c[0] for c in candidates], now)
                clashing = {id(row) for row in clashes}
                for row, tap, topic in candidates:
                    if id(row) in clashing:
                        why = f"tap_conflict: {row['tap_id']}"
                        dead.append(dead_letter_row(topic, encode(tap), why, now))
                        result.dead_by_gate[row["gate_id"]] += 1
                result.duplicates -= len(clashing)
            if forged:
                await authn.forged_alarms(session, forged, now)
            if dead:
                await session.execute(_insert(session, DeadLetterRow), dead)
                result.dead_lettered = len(dead)
            if taps:
                touched = {row["gate_id"]: row for row in taps.values()}
                await session.execute(
                    _insert(session, GateRow).on_conflict_do_nothing(index_elements=["gate_id"]),
                    [
                        {
                            "gate_id": g,
                            "station_id": r["station_id"],
                            "gate_no": r["gate_no"],
                            "committed_seq": 0,
                            "highest_seq": 0,
                            "state": "unknown",
                            "command_id": 0,
                        }
                        for g, r in touched.items()
                    ],
                )
                result.gates = await advance_gates(session, list(touched))
        return result

    async def dead_letter(self, message: RawMessage, reason: str) -> BatchResult:
        """Keep a message that could not be stored as taps (the database refused it, or handling it
        raised), with the reason."""
        row = dead_letter_row(message.topic, bytes(message.payload), reason, datetime.now(UTC))
        async with self.sessions.begin() as session:
            await session.execute(_insert(session, DeadLetterRow), [row])
        result = BatchResult(received=1, dead_lettered=1)
        result.dead_by_gate[row["gate_id"] or "?"] += 1
        return result

    async def dead_letter_alarm(self, gate_id: str, count: int, window_s: float) -> bool:
        """One `dead_letters` alarm for a gate per window (several workers may count the same burst);
        True if this call raised it."""
        now = datetime.now(UTC)
        gate = None if gate_id == "?" else gate_id  # "?": a topic without a valid gate id
        same_gate = AlarmRow.gate_id.is_(None) if gate is None else AlarmRow.gate_id == gate
        async with self.sessions.begin() as session:
            already = await session.scalar(
                select(AlarmRow.id).where(
                    AlarmRow.kind == "dead_letters",
                    same_gate,
                    AlarmRow.created_at >= now - timedelta(seconds=window_s),
                )
            )
            if already is not None:
                return False
            session.add(
                AlarmRow(
                    created_at=now,
                    kind="dead_letters",
                    severity="warning",
                    gate_id=gate,
                    detail=f"{count} messages dead-lettered within {window_s:.0f} s",
                )
            )
        return True

    async def gap_alarm(self, gate_id: str, missing: Sequence[tuple[int, int]], age_s: float) -> None:
        """One `tap_gap` alarm per gap (keyed by its first missing tap, so several workers seeing the
        same gap raise it once)."""
        first_missing = f"{gate_id}:{missing[0][0]}"  # the tap id of the first missing tap
        shown = ", ".join(f"{a}..{b}" if a != b else str(a) for a, b in missing[:8])
        more = f" and {len(missing) - 8} more gaps" if len(missing) > 8 else ""
        async with self.sessions.begin() as session:
            already = await session.scalar(
                select(AlarmRow.id).where(
                    AlarmRow.kind == "tap_gap", AlarmRow.gate_id == gate_id, AlarmRow.tap_id == first_missing
                )
            )
            if already is None:
                session.add(
                    AlarmRow(
                        created_at=datetime.now(UTC),
                        kind="tap_gap",
                        severity="warning",
                        gate_id=gate_id,
                        tap_id=first_missing,
                        detail=f"seq {shown}{more} missing for {age_s:.0f} s; the gate was asked to resend",
                    )
                )

    async def progress(self, gate_ids: Sequence[str]) -> dict[str, GateProgress]:
        """Re-evaluate gates' committed_seq and gaps (taps may have arrived through another worker)."""
        async with self.sessions.begin() as session:
            return await advance_gates(session, gate_ids)


async def _maybe_stored(session: AsyncSession, taps: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of `taps` at or below their gate's highest stored seq: only those can already be stored
    (a resend, a replay, or the same tap id at another time, which the key alone would let in). The
    gates' rows are locked until the commit, in gate order, so two workers storing taps of one gate
    take turns and the check cannot miss the other's insert (a gate's very first taps excepted: it has
    no row to lock yet)."""
    gate_ids = sorted({row["gate_id"] for row in taps.values()})
    highest = dict((await session.execute(
        select(GateRow.gate_id, GateRow.highest_seq).where(GateRow.gate_id.in_(gate_ids))
        .order_by(GateRow.gate_id).with_for_update())).all())
    return [row for row in taps.values() if row["seq"] <= highest.get(row["gate_id"], 0)]


async def advance_gates(session: AsyncSession, gate_ids: Sequence[str]) -> dict[str, GateProgress]:
    """Move each gate's committed_seq over every contiguous stored seq; report the gaps above it."""
    ids = list(gate_ids)
    committed = dict(
        (
            await session.execute(
                select(GateRow.gate_id, GateRow.committed_seq).where(GateRow.gate_id.in_(ids))
            )
        ).all()
    )
    rows = (
        await session.execute(
            select(TapRow.gate_id, TapRow.seq)
            .join(GateRow, GateRow.gate_id == TapRow.gate_id)
            .where(TapRow.gate_id.in_(ids), TapRow.seq > GateRow.committed_seq)
            .order_by(TapRow.gate_id, TapRow.seq)
        )
    ).all()
    above: dict[str, list[int]] = defaultdict(list)
    for gate, seq in rows:
        above[gate].append(seq)
    progress: dict[str, GateProgress] = {}
    updates = []
    for gate in ids:
        through = committed.get(gate, 0)
        seqs = above.get(gate, [])
        for seq in seqs:
            if seq != through + 1:
                break
            through = seq
        highest = max([through, *seqs])
        missing = _gaps(through, seqs)
        progress[gate] = GateProgress(gate, through, highest, missing)
        updates.append({"g": gate, "c": through, "h": highest})
    gates = cast(Table, GateRow.__table__)
    await session.execute(
        update(gates)
        .where(gates.c.gate_id == bindparam("g"), gates.c.committed_seq <= bindparam("c"))
        .values(committed_seq=bindparam("c"), highest_seq=bindparam("h")),
        updates,
    )
    return progress


def _gaps(through: int, seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Inclusive ranges missing between `through` and the highest of `seqs` (sorted, all > through)."""
    gaps: list[tuple[int, int]] = []
    expected = through + 1
    for seq in seqs:
        if seq < expected:
            continue
        if seq > expected:
            gaps.append((expected, seq - 1))
        expected = seq + 1
    return gaps
