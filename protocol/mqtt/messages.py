"""MQTT payloads shared by the gate and the backend: one definition, validated strictly on both ends.

docs/mqtt.md is the prose contract (topics, QoS, retained or not, the ack protocol); this module is the
schema. Every payload is UTF-8 JSON. Validation is strict on purpose: an unknown field, a float where
fen are expected or a non-UTC time is an error, so a gate with a bug is caught at the first message
instead of corrupting the ledger. Parse with `Model.model_validate_json(payload)`, build the wire bytes
with `encode(model)`. Where each payload goes is protocol/mqtt/topics.py.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)

from fare_core.reasons import Direction, GateMode, Reason

from .topics import gate_id, tap_id

U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1
MAX_LIST_ITEMS = 1_000_000  # deny-list items in one MQTT message; larger lists go over HTTP
#: The largest payload the contract allows on any topic: a full MAX_LIST_ITEMS deny-list snapshot is
#: ~19 MB, a fare table artefact at most MAX_ARTEFACT_CHARS. The shipped Mosquitto's max_packet_size
#: is sized from it (backend/deploy/mosquitto/mosquitto.conf; a test keeps the two in step).
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
MAX_ARTEFACT_CHARS = 24 * 1024 * 1024  # base64 of an 18 MB table: ~1,400 stations, 4 categories, 2 bands

_HEX16 = re.compile(r"[0-9a-fA-F]{16}")


def _card_id_from_wire(value: Any, info: ValidationInfo) -> Any:
    """16 hex digits on the wire -> int in Python; ints are accepted only from Python code."""
    if isinstance(value, str):
        if not _HEX16.fullmatch(value):
            raise ValueError("card_id must be exactly 16 hex digits")
        return int(value, 16)
    if info.mode == "json":
        raise ValueError("card_id must be a string of exactly 16 hex digits")
    return value


def _utc_only(value: datetime) -> datetime:
    offset = value.utcoffset()
    if offset is None or offset.total_seconds() != 0:
        raise ValueError("timestamps must be UTC (suffix Z or +00:00)")
    return value.astimezone(UTC)


def _whole_second(value: datetime) -> datetime:
    if value.microsecond:
        raise ValueError("tap time is whole UTC seconds (the value fare_core.decide was given)")
    return value


def _utc_wire(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if value.microsecond else "%Y-%m-%dT%H:%M:%SZ")


#: A phone's card id: u64 in Python, exactly 16 hex digits on the wire (lower case when sent).
CardId = Annotated[
    int,
    BeforeValidator(_card_id_from_wire),
    Field(ge=0, le=U64_MAX),
    PlainSerializer(lambda v: f"{v:016x}", return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": "^[0-9a-fA-F]{16}$"}),
]
#: A UTC timestamp, ISO 8601 with Z on the wire; other offsets are refused.
UtcTime = Annotated[
    datetime,
    AfterValidator(_utc_only),
    PlainSerializer(_utc_wire, return_type=str, when_used="json"),
]
#: Money in fen (1/100 yuan): an integer, never negative, never a float.
Fen = Annotated[int, Field(ge=0, le=U32_MAX)]
#: A wallet balance (the record's i32): below zero only after an overdraft tap (docs/fare_core.md).
Balance = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
#: A checksum or hash as lower-case hex (as fare_core computes it for deny-lists and fare tables).
Checksum = Annotated[str, Field(pattern=r"^[0-9a-f]{8,128}$")]
#: A version number of the deny-list, fare table or action list: u32, only ever grows.
Version = Annotated[int, Field(ge=0, le=U32_MAX)]
StationId = Annotated[int, Field(ge=0, le=0xFFFF)]
GateNo = Annotated[int, Field(ge=0, le=0xFF)]
Seq = Annotated[int, Field(ge=1, le=(1 << 63) - 1)]
GateIdStr = Annotated[str, Field(pattern=r"^\d{1,5}-\d{1,3}$")]
#: Authentication fields (protocol/mqtt/auth.py): a gate's MAC, the backend's key id and signature, hex.
Mac = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
KeyId = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
Signature = Annotated[str, Field(pattern=r"^[0-9a-f]{128}$")]


class Payload(BaseModel):
    """Base of every payload: unknown fields refused, no coercion, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def encode(message: Payload) -> bytes:
    """The wire bytes of a payload (compact JSON)."""
    return message.model_dump_json().encode()


# --- gate -> backend ---------------------------------------------------------------------------------


class TapMessage(Payload):
    """One tap as the gate decided it: enough to re-run fare_core.decide and to keep the ledger."""

    schema_version: Literal[1] = 1  # bumps only for an incompatible change
    tap_id: str  # "{station_id}-{gate_no}:{seq}", checked against the three fields below
    station_id: StationId  # operator station id of the gate (u16)
    gate_no: GateNo  # gate number inside the station (u8)
    seq: Seq  # per-gate sequence, starts at 1, +1 per tap, persisted in the gate journal
    card_id: CardId  # the phone's card id
    time: Annotated[UtcTime, AfterValidator(_whole_second)]  # the UTC second passed to decide()
    direction: Direction  # 0 entry (or boarding), 1 exit
    mode: GateMode  # the gate's mode when it decided
    allowed: bool  # barrier opened
    reason: Reason  # fare_core reason code (reasons.py)
    flags: Annotated[int, Field(ge=0, le=U32_MAX)]  # fare_core.Flag bits
    fare: Fen  # fen charged by this tap
    balance_before: Balance  # wallet balance read (fen; negative: an overdraft's debt)
    balance_after: Balance  # wallet balance after the tap (fen; = before when nothing was written)
    counter_before: Annotated[int, Field(ge=0, le=U32_MAX)]  # wallet transaction counter read
    counter_after: Annotated[int, Field(ge=0, le=U32_MAX)]  # counter written (= before when no write)
    wallet_before: Annotated[str, Field(pattern=r"^[0-9a-f]{256}$")]  # 128 wallet bytes read, hex
    fare_table_version: Version  # fare table the gate used
    denylist_version: Version  # deny-list version the gate used
    min_counter: Annotated[int, Field(ge=0, le=U32_MAX)]  # lowest counter the gate accepted (0 = any)
    action_id: Annotated[int, Field(ge=1, le=(1 << 63) - 1)] | None = None  # action applied, if any
    topup_applied: Fen = 0  # fen added by that action on this tap
    latency_us: Annotated[int, Field(ge=0, le=U32_MAX)]  # card-in-field to decision, microseconds
    mac: Mac | None = None  # the gate's MAC (auth.py); last field, the backend refuses it missing

    @model_validator(mode="after")
    def _consistent(self) -> TapMessage:
        expected = tap_id(self.station_id, self.gate_no, self.seq)
        if self.tap_id != expected:
            raise ValueError(f"tap_id {self.tap_id!r} does not match station/gate/seq ({expected!r})")
        if self.counter_after < self.counter_before:
            raise ValueError("counter_after below counter_before")
        if self.topup_applied and self.action_id is None:
            raise ValueError("topup_applied without an action_id")
        return self

    @property
    def gate_id(self) -> str:
        return gate_id(self.station_id, self.gate_no)

    def wallet_bytes(self) -> bytes:
        return bytes.fromhex(self.wallet_before)


MAX_TAPS_PER_MESSAGE = 500  # a larger array on the taps topic is refused whole (dead-lettered)


def encode_taps(payloads: list[bytes]) -> bytes:
    """One taps-topic payload for taps the journal already holds encoded.

    A single tap goes as its TapMessage object; several (a backlog, a resend) go as a JSON array of
    them, oldest first, so a gate catching up pays one MQTT message per group instead of per tap.
    """
    if not payloads:
        raise ValueError("no taps to encode")
    if len(payloads) > MAX_TAPS_PER_MESSAGE:
        raise ValueError(f"{len(payloads)} taps in one message; at most {MAX_TAPS_PER_MESSAGE}")
    return payloads[0] if len(payloads) == 1 else b"[" + b",".join(payloads) + b"]"


class GateState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"  # also the last will, published by the broker when the gate vanishes


class GateStatus(Payload):
    """A gate's retained status; its last will is the same model with state "offline"."""

    gate_id: GateIdStr  # "{station_id}-{gate_no}"
    state: GateState  # online / offline
    time: UtcTime | None = None  # when the gate published it (None in the last will)
    mode: GateMode | None = None  # mode in force
    fare_table_version: Version | None = None  # fare table in use
    denylist_version: Version | None = None  # deny-list in use
    actions_version: Version | None = None  # action list in use
    last_seq: Annotated[int, Field(ge=0)] | None = None  # highest seq journaled
    journal_pending: Annotated[int, Field(ge=0)] | None = None  # taps not yet committed by the backend
    software: Annotated[str, Field(max_length=64)] | None = None  # gate software version
    tap_to_open_p50_ms: Annotated[float, Field(ge=0)] | None = None  # over the gate's latest 1000 taps
    tap_to_open_p99_ms: Annotated[float, Field(ge=0)] | None = None  # (phone seen -> barrier open acked)
    host_p99_ms: Annotated[float, Field(ge=0)] | None = None  # the gate's own processing, same taps
    tailgating_alarms: Annotated[int, Field(ge=0)] | None = None  # since the gate started
    forced_door_alarms: Annotated[int, Field(ge=0)] | None = None  # since the gate started
    # backend messages refused since the gate started: unsigned, badly signed or by an unknown key, or an
    # ack above what the gate sent (an alarm: someone on the broker is sending in the backend's name)
    auth_refused: Annotated[int, Field(ge=0)] | None = None
    auth_alarm: Annotated[str, Field(max_length=200)] | None = None  # the latest refusal, for the operator
    mac: Mac | None = None  # the gate's MAC (auth.py); last field, the backend refuses it missing


class UpdateKind(StrEnum):
    DENYLIST = "denylist"
    FARE_TABLE = "fare_table"
    ACTIONS = "actions"


class SnapshotRequest(Payload):
    """A gate that cannot apply an update (wrong base, bad checksum) asks for the full state again."""

    gate_id: GateIdStr  # who asks
    kind: UpdateKind  # what it needs
    have_version: Version  # the version it holds
    time: UtcTime  # when it asked
    mac: Mac | None = None  # the gate's MAC (auth.py); last field, the backend refuses it missing


# --- backend -> gate ---------------------------------------------------------------------------------


class Committed(Payload):
    """Every tap of this gate with seq <= through_seq is in the database: the journal may drop them."""

    gate_id: GateIdStr  # the gate addressed
    through_seq: Annotated[int, Field(ge=0)]  # highest seq with no gap below it that is committed
    time: UtcTime  # when the backend committed
    key_id: KeyId | None = None  # the backend key that signed (auth.py); a gate refuses it missing
    sig: Signature | None = None  # Ed25519 signature over the canonical bytes; last field


class ResendRequest(Payload):
    """The backend saw a gap in this gate's sequence: publish taps from_seq..to_seq again."""

    gate_id: GateIdStr  # the gate addressed
    from_seq: Seq  # first missing seq
    to_seq: Seq  # last missing seq (inclusive)
    time: UtcTime  # when the gap was seen
    key_id: KeyId | None = None  # the backend key that signed (auth.py); a gate refuses it missing
    sig: Signature | None = None  # Ed25519 signature over the canonical bytes; last field

    @model_validator(mode="after")
    def _ordered(self) -> ResendRequest:
        if self.to_seq < self.from_seq:
            raise ValueError("to_seq below from_seq")
        return self


class GateCommand(Payload):
    """The mode a gate must run in (retained: a gate that reconnects applies the latest command)."""

    gate_id: GateIdStr  # the gate addressed
    command_id: Annotated[int, Field(ge=1)]  # grows per command; a gate ignores an older one
    mode: GateMode  # normal, free exit (emergency), closed, maintenance
    reason: Annotated[str, Field(max_length=200)] = ""  # why, for the gate log and display
    issued_at: UtcTime  # when the operator issued it
    key_id: KeyId | None = None  # the backend key that signed (auth.py); a gate refuses it missing
    sig: Signature | None = None  # Ed25519 signature over the canonical bytes; last field


CardIdList = Annotated[list[CardId], Field(max_length=MAX_LIST_ITEMS)]


class DenyListDeltaMessage(Payload):
    """Cards added to / removed from the deny-list, applying only on base_version (else ask snapshot)."""

    version: Version  # the version after applying
    base_version: Version  # the version it applies to
    add: CardIdList  # card ids now denied
    remove: CardIdList  # card ids no longer denied
    checksum: Checksum  # fare_core.DenyList checksum of the whole list after applying
    time: UtcTime  # when published
    key_id: KeyId | None = None  # the backend key that signed (auth.py); a gate refuses it missing
    sig: Signature | None = None  # Ed25519 signature over the canonical bytes; last field

    @model_validator(mode="after")
    def _newer(self) -> DenyListDeltaMessage:
        if self.version <= self.base_version:
            raise ValueError("version must be above base_version")
        return self


class DenyListSnapshotMessage(Payload):
    """The whole deny-list at a version (retained): what a new or confused gate starts from."""

    version: Version  # deny-list version
    card_ids: CardIdList  # every denied card id
    checksum: Checksum  # fare_core.DenyList checksum of exactly these ids
    time: UtcTime  # when published
    key_id: KeyId | None = None  # the backend key that signed (auth.py); a gate refuses it missing
    sig: Signature | None = None  # Ed25519 signature over the canonical bytes; last field


class DenyListSnapshotRef(Payload):
    """The current deny-list is too big for MQTT (past MAX_LIST_ITEMS ids): fetch it over HTTP.

    Retained, on its own topic; the backend publishes it instead of the MQTT snapshot. A gate holding an
    older version downloads fare_core's binary snapshot from the backend (DENYLIST_FETCH_PATH, its own
    MAC in the headers, `GateFetchAuth`) and applies it only if the file's SHA-256, version and checksum
    are the signed ones here. The SHA-256 is what binds the file: fare_core's checksum catches
    corruption, not an adversary who crafts ids to a given sum (docs/security.md)."""

    version: Version  # deny-list version of the file
    checksum: Checksum  # fare_core.DenyList checksum of the list in the file
    size: Annotated[int, Field(ge=0, le=U32_MAX)]  # ids in the list (the file is 48 + 8 * size bytes)
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]  # of the file's exact bytes
    time: UtcTime  # when published
    key_id: KeyId | None = None  # the backend key that signed (auth.py); a gate refuses it missing
    sig: Signature | None = None  # Ed25519 signature over the canonical bytes; last field


#: Where a gate downloads the binary deny-list snapshot (under its `[backend] url`).
DENYLIST_FETCH_PATH = "/api/v1/denylist/gate.bin"
#: The HTTP headers that carry a `GateFetchAuth`: the gate id, its time, its MAC.
FETCH_GATE_HEADER = "X-Faregate-Gate"
FETCH_TIME_HEADER = "X-Faregate-Time"
FETCH_MAC_HEADER = "X-Faregate-Mac"
FETCH_MAX_SKEW_S = 300  # a fetch whose time is further than this from the backend's clock is refused


class GateFetchAuth(Payload):
    """What a gate MACs (under its own uplink key) to fetch from the backend over HTTP: the method, the
    request target (path and query) and its time travel in the headers above, so a MAC is good for
    that one request within FETCH_MAX_SKEW_S only."""

    gate_id: GateIdStr  # who asks
    method: Literal["GET"]
    target: Annotated[str, Field(min_length=1, max_length=300)]  # path and query, as sent
    time: UtcTime  # the gate's clock
    mac: Mac | None = None  # the gate's MAC (auth.py); last field


class FareTableMessage(Payload):
    """A compiled fare table artefact (retained) and when gates must start using it."""

    version: Version  # FareTable.version inside the artefact
    checksum: Checksum  # FareTable.checksum inside the artefact
    activate_at: UtcTime  # gates load it now and switch at this time (already past = at once)
    artefact: Annotated[str, Field(max_length=MAX_ARTEFACT_CHARS)]  # fare_core.artefact bytes, base64
    key_id: KeyId | None = None  # the backend key that signed (auth.py); a gate refuses it missing
    sig: Signature | None = None  # Ed25519 signature over the canonical bytes; last field


class Action(Payload):
    """A pending over-the-air action, applied by any gate at the phone's next tap."""

    action_id: Annotated[int, Field(ge=1)]  # reported back in TapMessage.action_id when applied
    card_id: CardId  # the phone it applies to
    topup: Fen = 0  # fen to add to the wallet
    unblock: bool = False  # clear the wallet's blocked status


class ActionListMessage(Payload):
    """Every pending action (retained); an applied action disappears from the next version."""

    version: Version  # grows with every change
    actions: Annotated[list[Action], Field(max_length=MAX_LIST_ITEMS)]  # pending actions
    time: UtcTime  # when published
    key_id: KeyId | None = None  # the backend key that signed (auth.py); a gate refuses it missing
    sig: Signature | None = None  # Ed25519 signature over the canonical bytes; last field


RetainedState = (DenyListSnapshotMessage | DenyListSnapshotRef | FareTableMessage | ActionListMessage
                 | GateCommand)


def state_version(message: RetainedState) -> int:
    """What orders a retained state message on its topic: a gate takes only a newer one (gate/state.py),
    and a relay hands down none older than one it already handed down (backend/relay.py)."""
    return message.command_id if isinstance(message, GateCommand) else message.version
