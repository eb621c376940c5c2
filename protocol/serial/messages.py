"""Every command, response and event of the reader / gate-mechanism link, as frozen dataclasses.

A message knows its code and how to turn its payload into bytes and back; `framer` wraps it in a
frame. Three kinds, told apart by the code range so that a stray byte cannot turn a response into a
request::

    0x01-0x3F  requests   controller -> device   every one answered by exactly one response
    0x80-0xBF  responses  device -> controller   echo the request's SEQ
    0xC0-0xFF  events     device -> controller   unsolicited, carry the device's own SEQ

Decoding a payload raises `PayloadError` carrying the `NakReason` the device answers with (unknown
command, bad length, bad payload); nothing else escapes. docs/protocol.md is the prose version, and
its golden byte vectors are checked by tests/protocol/test_golden.py.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self, TypeVar

from fare_core.reasons import Direction as Direction  # re-exported: the one Direction, decided and sent

from .framer import MAX_PAYLOAD, Frame, encode

PROTOCOL_VERSION = 2  # 2: OpenSession / SessionOpened (a controller session clears the retry cache)
WALLET_SIZE = 128  # two 64-byte record slots (docs/fare_core.md)
SLOT_SIZE = 64
MAX_PHONES = 8  # phones listed in one field report; more are summarised by the count byte


class Command(enum.IntEnum):
    """Every code on the wire. Never renumber, only add."""

    # requests (controller -> device)
    HEARTBEAT = 0x01
    GET_STATUS = 0x02
    GET_VERSION = 0x03
    OPEN_SESSION = 0x04
    POLL_FIELD = 0x10
    READ_WALLET = 0x11
    WRITE_SLOT = 0x12
    BARRIER_OPEN = 0x20
    BARRIER_CLOSE = 0x21
    DISPLAY = 0x22
    LIGHTS = 0x23
    BUZZER = 0x24
    # responses (device -> controller, SEQ of the request)
    ACK = 0x80
    NAK = 0x81
    HEARTBEAT_REPLY = 0x82
    STATUS = 0x83
    VERSION = 0x84
    SESSION_OPENED = 0x85
    FIELD = 0x90
    WALLET = 0x91
    WRITE_RESULT = 0x92
    # events (device -> controller, unsolicited)
    FIELD_CHANGED = 0xC0
    TORN_WRITE = 0xC1
    BARRIER_CHANGED = 0xC2
    PASSAGE = 0xC3
    ALARM = 0xC4
    BOOT = 0xC5


class Kind(enum.Enum):
    REQUEST = "request"
    RESPONSE = "response"
    EVENT = "event"


def kind_of(code: int) -> Kind | None:
    """Which range `code` falls in, or None for the unused ranges."""
    if 0x01 <= code <= 0x3F:
        return Kind.REQUEST
    if 0x80 <= code <= 0xBF:
        return Kind.RESPONSE
    if code >= 0xC0:
        return Kind.EVENT
    return None


class NakReason(enum.IntEnum):
    """Why the device refused a request (payload of NAK)."""

    UNKNOWN_COMMAND = 1  # the code is not a request this firmware knows
    BAD_LENGTH = 2  # the payload has the wrong size for the command
    BAD_PAYLOAD = 3  # right size, impossible value (slot 2, invalid UTF-8, unknown enum value)
    BUSY = 4  # an RF operation is already running; retry after its response


class BarrierPosition(enum.IntEnum):
    CLOSED = 0
    OPENING = 1
    OPEN = 2
    CLOSING = 3


class RfStatus(enum.IntEnum):
    """Outcome of a wallet read."""

    OK = 0
    NO_PHONE = 1  # the phone is not in the field, or beyond the distance-control threshold
    LOST = 2  # the phone left the field during the read


class WriteOutcome(enum.IntEnum):
    """Outcome of a write-with-verify of one slot."""

    OK = 0  # written and read back identical
    TORN = 1  # the phone left mid-write: `bytes_written` bytes of the slot were written
    FAILED = 2  # written but the read-back differs (the slot is not to be trusted)
    NO_PHONE = 3  # the phone was not in the field or beyond the threshold: nothing written


class DisplayStyle(enum.IntEnum):
    INFO = 0
    OK = 1
    DENY = 2
    ALARM = 3


class Light(enum.IntFlag):
    OFF = 0
    GREEN = 1  # pass
    RED = 2  # no entry
    YELLOW = 4  # attention (concession fare, low balance)
    WHITE = 8  # service / out of order


class BuzzerPattern(enum.IntEnum):
    OFF = 0
    BEEP = 1  # one short beep: accepted
    DOUBLE = 2  # two beeps: refused
    ALARM = 3  # continuous: tailgating / forced door


class AlarmKind(enum.IntEnum):
    TAILGATING = 1  # a second person passed on one authorisation
    FORCED_DOOR = 2  # someone passed while the barrier was closed


class PayloadError(ValueError):
    """A payload the device cannot act on; `reason` is what its NAK says."""

    def __init__(self, reason: NakReason, detail: str) -> None:
        super().__init__(f"{reason.name}: {detail}")
        self.reason = reason


class UnknownCommand(PayloadError):
    def __init__(self, code: int) -> None:
        super().__init__(NakReason.UNKNOWN_COMMAND, f"command 0x{code:02X}")
        self.code = code


def _coerce(obj: object, name: str, enum_type: type[enum.IntEnum] | type[enum.IntFlag]) -> None:
    """Turn a raw int field into its enum (frozen dataclass), or refuse it as a bad payload."""
    value = getattr(obj, name)
    try:
        object.__setattr__(obj, name, enum_type(value))
    except ValueError:
        raise PayloadError(NakReason.BAD_PAYLOAD, f"{name}={value!r} is not a {enum_type.__name__}") from None


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or not low <= value <= high:
        raise PayloadError(NakReason.BAD_PAYLOAD, f"{name}={value!r} outside {low}..{high}")


class Message:
    """Base of every message: its code, kind and payload codec."""

    CODE: ClassVar[Command]

    @property
    def kind(self) -> Kind:
        found = kind_of(self.CODE)
        assert found is not None
        return found

    def encode_payload(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode_payload(cls, payload: bytes) -> Self:
        raise NotImplementedError

    def to_frame(self, seq: int) -> Frame:
        return Frame(seq, int(self.CODE), self.encode_payload())

    def to_bytes(self, seq: int) -> bytes:
        return encode(self.to_frame(seq))


class _Fixed(Message):
    """A message whose payload is one struct of its dataclass fields, in declaration order."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<")

    def encode_payload(self) -> bytes:
        return self.FORMAT.pack(*(getattr(self, f.name) for f in fields(self)))  # type: ignore[arg-type]

    @classmethod
    def decode_payload(cls, payload: bytes) -> Self:
        if len(payload) != cls.FORMAT.size:
            raise PayloadError(NakReason.BAD_LENGTH,
                               f"{cls.__name__} needs {cls.FORMAT.size} bytes, got {len(payload)}")
        return cls(*cls.FORMAT.unpack(payload))


REGISTRY: dict[int, type[Message]] = {}
_M = TypeVar("_M", bound=type[Message])


def _register(cls: _M) -> _M:
    if int(cls.CODE) in REGISTRY:
        raise RuntimeError(f"duplicate code {cls.CODE!r}")
    REGISTRY[int(cls.CODE)] = cls
    return cls


# ---------------------------------------------------------------- requests


@_register
@dataclass(frozen=True, slots=True)
class Heartbeat(_Fixed):
    """Are you there? Answered by HeartbeatReply (the controller sends one a second)."""

    CODE = Command.HEARTBEAT


@_register
@dataclass(frozen=True, slots=True)
class GetStatus(_Fixed):
    """Answered by Status: barrier, sensor, counters, link quality."""

    CODE = Command.GET_STATUS


@_register
@dataclass(frozen=True, slots=True)
class GetVersion(_Fixed):
    """Answered by Version."""

    CODE = Command.GET_VERSION


@_register
@dataclass(frozen=True, slots=True)
class OpenSession(_Fixed):
    """A controller's first request on every (re)open of the port. Answered by SessionOpened.

    The device caches its last answers by (SEQ, command, payload) so that a resend is never executed
    twice; a new controller process (restarted, crashed, upgraded) whose SEQs start over would get
    the previous process's cached answers to its first requests. On OpenSession the device forgets
    that cache and drops the answers still owed to earlier requests (an RF operation finishing later),
    so every answer after SessionOpened is to a request of this session. It is always executed, never
    answered from the cache. `nonce` is random: SessionOpened echoes it, so the controller knows the
    answer is to this OpenSession and not a stale copy."""

    CODE = Command.OPEN_SESSION
    FORMAT = struct.Struct("<I")
    nonce: int

    def __post_init__(self) -> None:
        _check_range("nonce", self.nonce, 0, 0xFFFFFFFF)


@_register
@dataclass(frozen=True, slots=True)
class PollField(_Fixed):
    """Which phones are in the field right now? Answered by Field."""

    CODE = Command.POLL_FIELD


@_register
@dataclass(frozen=True, slots=True)
class ReadWallet(_Fixed):
    """Read the 128 wallet bytes of one phone over RF. Answered by Wallet."""

    CODE = Command.READ_WALLET
    FORMAT = struct.Struct("<Q")
    card_id: int

    def __post_init__(self) -> None:
        _check_range("card_id", self.card_id, 0, 2**64 - 1)


@_register
@dataclass(frozen=True, slots=True)
class WriteSlot(_Fixed):
    """Write one 64-byte record into slot 0 or 1 and read it back. Answered by WriteResult."""

    CODE = Command.WRITE_SLOT
    FORMAT = struct.Struct("<QB64s")
    card_id: int
    slot: int
    record: bytes

    def __post_init__(self) -> None:
        _check_range("card_id", self.card_id, 0, 2**64 - 1)
        _check_range("slot", self.slot, 0, 1)
        if len(self.record) != SLOT_SIZE:
            raise PayloadError(NakReason.BAD_PAYLOAD, f"record of {len(self.record)} bytes, not 64")


@_register
@dataclass(frozen=True, slots=True)
class BarrierOpen(_Fixed):
    """Open for `passages` people in `direction` (0 = until BarrierClose); close after `hold_ms`
    if nobody passes. Answered by Ack at once; the motion is reported by BarrierChanged events."""

    CODE = Command.BARRIER_OPEN
    FORMAT = struct.Struct("<BBH")
    direction: Direction
    passages: int = 1
    hold_ms: int = 5000

    def __post_init__(self) -> None:
        _coerce(self, "direction", Direction)
        _check_range("passages", self.passages, 0, 255)
        _check_range("hold_ms", self.hold_ms, 0, 0xFFFF)


@_register
@dataclass(frozen=True, slots=True)
class BarrierClose(_Fixed):
    """Close now (cancels any authorisation left). Answered by Ack."""

    CODE = Command.BARRIER_CLOSE


@_register
@dataclass(frozen=True, slots=True)
class Display(Message):
    """Show two lines, Chinese then English, for `timeout_ms` (0 = until replaced). Answered by Ack.

    Payload: style u8, timeout_ms u16, len_zh u8, zh UTF-8, len_en u8, en UTF-8.
    """

    CODE = Command.DISPLAY
    style: DisplayStyle
    timeout_ms: int
    line_zh: str
    line_en: str

    def __post_init__(self) -> None:
        _coerce(self, "style", DisplayStyle)
        _check_range("timeout_ms", self.timeout_ms, 0, 0xFFFF)
        size = 5 + len(self.line_zh.encode()) + len(self.line_en.encode())
        if size > MAX_PAYLOAD:
            raise PayloadError(NakReason.BAD_PAYLOAD, f"display text of {size} bytes exceeds {MAX_PAYLOAD}")

    def encode_payload(self) -> bytes:
        zh, en = self.line_zh.encode(), self.line_en.encode()
        return struct.pack("<BHB", self.style, self.timeout_ms, len(zh)) + zh + bytes([len(en)]) + en

    @classmethod
    def decode_payload(cls, payload: bytes) -> Self:
        if len(payload) < 5:
            raise PayloadError(NakReason.BAD_LENGTH, f"Display needs at least 5 bytes, got {len(payload)}")
        style, timeout_ms, len_zh = struct.unpack_from("<BHB", payload)
        end_zh = 4 + len_zh
        if end_zh >= len(payload) or end_zh + 1 + payload[end_zh] != len(payload):
            raise PayloadError(NakReason.BAD_LENGTH, "Display line lengths do not add up to the payload")
        try:
            zh = payload[4:end_zh].decode()
            en = payload[end_zh + 1:].decode()
        except UnicodeDecodeError as error:
            raise PayloadError(NakReason.BAD_PAYLOAD, f"display text is not UTF-8: {error}") from None
        return cls(style, timeout_ms, zh, en)


@_register
@dataclass(frozen=True, slots=True)
class Lights(_Fixed):
    """Set the indicator lights (a Light mask), steady or blinking. Answered by Ack."""

    CODE = Command.LIGHTS
    FORMAT = struct.Struct("<BB")
    lights: Light
    blink: int = 0

    def __post_init__(self) -> None:
        _check_range("lights", int(self.lights), 0, 15)
        _coerce(self, "lights", Light)
        _check_range("blink", self.blink, 0, 1)


@_register
@dataclass(frozen=True, slots=True)
class Buzzer(_Fixed):
    """Sound a pattern for `duration_ms`. Answered by Ack."""

    CODE = Command.BUZZER
    FORMAT = struct.Struct("<BH")
    pattern: BuzzerPattern
    duration_ms: int = 150

    def __post_init__(self) -> None:
        _coerce(self, "pattern", BuzzerPattern)
        _check_range("duration_ms", self.duration_ms, 0, 0xFFFF)


# ---------------------------------------------------------------- responses


@_register
@dataclass(frozen=True, slots=True)
class Ack(_Fixed):
    """Done (for requests with nothing to return); `command` is the request's code."""

    CODE = Command.ACK
    FORMAT = struct.Struct("<B")
    command: int

    def __post_init__(self) -> None:
        _check_range("command", self.command, 0, 255)


@_register
@dataclass(frozen=True, slots=True)
class Nak(_Fixed):
    """Refused: `command` is the request's code (even an unknown one), `reason` why."""

    CODE = Command.NAK
    FORMAT = struct.Struct("<BB")
    command: int
    reason: NakReason

    def __post_init__(self) -> None:
        _check_range("command", self.command, 0, 255)
        _coerce(self, "reason", NakReason)


@_register
@dataclass(frozen=True, slots=True)
class HeartbeatReply(_Fixed):
    """`boot_id` changes at every power-up: a new value means the device rebooted (state lost)."""

    CODE = Command.HEARTBEAT_REPLY
    FORMAT = struct.Struct("<HI")
    boot_id: int
    uptime_ms: int


@_register
@dataclass(frozen=True, slots=True)
class Status(_Fixed):
    """Everything a controller needs after a reconnect or a lost event."""

    CODE = Command.STATUS
    FORMAT = struct.Struct("<BBBBBBbIIHHIIIIH")
    position: BarrierPosition
    direction: Direction
    passages_pending: int  # authorised passages not yet used
    sensor_occupied: int  # 1 while someone is in the passage
    phones_in_field: int  # within the distance-control threshold
    lights: Light
    rssi_threshold_dbm: int  # distance control: phones weaker than this are never reported
    entries_total: int  # passages counted by the sensor since boot, per direction
    exits_total: int
    tailgating_total: int
    forced_total: int
    rx_frames: int  # link quality as the device sees it
    rx_bad_crc: int
    rx_discarded_bytes: int
    uptime_ms: int
    boot_id: int

    def __post_init__(self) -> None:
        _coerce(self, "position", BarrierPosition)
        _coerce(self, "direction", Direction)
        _coerce(self, "lights", Light)


@_register
@dataclass(frozen=True, slots=True)
class Version(Message):
    """Firmware version, protocol version, model name (ASCII). Payload: u8 x4, len u8, model."""

    CODE = Command.VERSION
    major: int
    minor: int
    patch: int
    protocol: int
    model: str

    def encode_payload(self) -> bytes:
        model = self.model.encode("ascii")
        return bytes((self.major, self.minor, self.patch, self.protocol, len(model))) + model

    @classmethod
    def decode_payload(cls, payload: bytes) -> Self:
        if len(payload) < 5 or len(payload) != 5 + payload[4]:
            raise PayloadError(NakReason.BAD_LENGTH, "Version length byte does not match the payload")
        try:
            model = payload[5:].decode("ascii")
        except UnicodeDecodeError:
            raise PayloadError(NakReason.BAD_PAYLOAD, "model name is not ASCII") from None
        return cls(payload[0], payload[1], payload[2], payload[3], model)


@_register
@dataclass(frozen=True, slots=True)
class SessionOpened(_Fixed):
    """Answer to OpenSession: its `nonce` echoed, and the device's `boot_id` (as HeartbeatReply)."""

    CODE = Command.SESSION_OPENED
    FORMAT = struct.Struct("<IH")
    nonce: int
    boot_id: int


@dataclass(frozen=True, slots=True)
class PhoneSignal:
    """One phone heard in the field: its card id and received signal strength (dBm, signed byte)."""

    card_id: int
    rssi_dbm: int


_PHONE = struct.Struct("<Qb")


class _FieldReport(Message):
    """Payload: count u8 (phones within the threshold), then min(count, 8) x (card_id u64, rssi i8)."""

    phones: tuple[PhoneSignal, ...]

    def encode_payload(self) -> bytes:
        listed = self.phones[:MAX_PHONES]
        return bytes([len(self.phones)]) + b"".join(_PHONE.pack(p.card_id, p.rssi_dbm) for p in listed)

    @classmethod
    def decode_payload(cls, payload: bytes) -> Self:
        if not payload:
            raise PayloadError(NakReason.BAD_LENGTH, "field report without a count")
        listed = min(payload[0], MAX_PHONES)
        if len(payload) != 1 + listed * _PHONE.size:
            raise PayloadError(NakReason.BAD_LENGTH,
                               f"field report of {payload[0]} phones has {len(payload)} bytes")
        phones = tuple(PhoneSignal(*_PHONE.unpack_from(payload, 1 + i * _PHONE.size)) for i in range(listed))
        return cls(phones)  # type: ignore[call-arg]


@_register
@dataclass(frozen=True, slots=True)
class Field(_FieldReport):
    """Answer to PollField."""

    CODE = Command.FIELD
    phones: tuple[PhoneSignal, ...]


@_register
@dataclass(frozen=True, slots=True)
class Wallet(Message):
    """Answer to ReadWallet. Payload: card_id u64, status u8, then the 128 wallet bytes if status OK."""

    CODE = Command.WALLET
    card_id: int
    status: RfStatus
    wallet: bytes = b""

    def __post_init__(self) -> None:
        _coerce(self, "status", RfStatus)
        expected = WALLET_SIZE if self.status is RfStatus.OK else 0
        if len(self.wallet) != expected:
            raise PayloadError(NakReason.BAD_LENGTH, f"{self.status.name} wallet of {len(self.wallet)} bytes")

    def encode_payload(self) -> bytes:
        return struct.pack("<QB", self.card_id, self.status) + self.wallet

    @classmethod
    def decode_payload(cls, payload: bytes) -> Self:
        if len(payload) not in (9, 9 + WALLET_SIZE):
            raise PayloadError(NakReason.BAD_LENGTH, f"Wallet of {len(payload)} bytes")
        card_id, status = struct.unpack_from("<QB", payload)
        return cls(card_id, status, payload[9:])


@_register
@dataclass(frozen=True, slots=True)
class WriteResult(_Fixed):
    """Answer to WriteSlot."""

    CODE = Command.WRITE_RESULT
    FORMAT = struct.Struct("<QBBB")
    card_id: int
    slot: int
    outcome: WriteOutcome
    bytes_written: int

    def __post_init__(self) -> None:
        _coerce(self, "outcome", WriteOutcome)


# ---------------------------------------------------------------- events


@_register
@dataclass(frozen=True, slots=True)
class FieldChanged(_FieldReport):
    """The set of phones within the threshold changed (a phone came or went); RSSI alone does not."""

    CODE = Command.FIELD_CHANGED
    phones: tuple[PhoneSignal, ...]


@_register
@dataclass(frozen=True, slots=True)
class TornWrite(_Fixed):
    """A write was cut short by the phone leaving; sent besides WriteResult so a controller whose
    response was lost still learns it. The slot is invalid; the other slot holds the old record."""

    CODE = Command.TORN_WRITE
    FORMAT = struct.Struct("<QBB")
    card_id: int
    slot: int
    bytes_written: int


@_register
@dataclass(frozen=True, slots=True)
class BarrierChanged(_Fixed):
    """The barrier started or finished moving."""

    CODE = Command.BARRIER_CHANGED
    FORMAT = struct.Struct("<BB")
    position: BarrierPosition
    direction: Direction

    def __post_init__(self) -> None:
        _coerce(self, "position", BarrierPosition)
        _coerce(self, "direction", Direction)


@_register
@dataclass(frozen=True, slots=True)
class Passage(_Fixed):
    """The passage sensor saw one person go through. Cumulative counters make a lost event visible."""

    CODE = Command.PASSAGE
    FORMAT = struct.Struct("<BBII")
    direction: Direction
    authorised: int  # 1 if it used an authorisation from BarrierOpen
    entries_total: int
    exits_total: int

    def __post_init__(self) -> None:
        _coerce(self, "direction", Direction)


@_register
@dataclass(frozen=True, slots=True)
class Alarm(_Fixed):
    """Tailgating or forced door; `count` is the running total of this kind since boot."""

    CODE = Command.ALARM
    FORMAT = struct.Struct("<BBI")
    alarm: AlarmKind
    direction: Direction
    count: int

    def __post_init__(self) -> None:
        _coerce(self, "alarm", AlarmKind)
        _coerce(self, "direction", Direction)


@_register
@dataclass(frozen=True, slots=True)
class Boot(_Fixed):
    """Sent once after power-up or replug: the barrier is closed, the display blank, counters zero."""

    CODE = Command.BOOT
    FORMAT = struct.Struct("<HBBBB")
    boot_id: int
    major: int
    minor: int
    patch: int
    protocol: int


# ---------------------------------------------------------------- frame <-> message

#: The response class(es) each request is answered with (besides Nak, which any request may get).
RESPONSE_TO: dict[type[Message], type[Message]] = {
    Heartbeat: HeartbeatReply,
    GetStatus: Status,
    GetVersion: Version,
    OpenSession: SessionOpened,
    PollField: Field,
    ReadWallet: Wallet,
    WriteSlot: WriteResult,
    BarrierOpen: Ack,
    BarrierClose: Ack,
    Display: Ack,
    Lights: Ack,
    Buzzer: Ack,
}


def parse(frame: Frame) -> Message:
    """The message in `frame`; raises UnknownCommand or PayloadError (with the NAK reason)."""
    cls = REGISTRY.get(frame.command)
    if cls is None:
        raise UnknownCommand(frame.command)
    try:
        return cls.decode_payload(frame.payload)
    except (struct.error, UnicodeDecodeError, TypeError) as error:  # defensive: codecs check first
        raise PayloadError(NakReason.BAD_PAYLOAD, str(error)) from None


def message_fields(message: Message | PhoneSignal) -> dict[str, Any]:
    """The message's fields as a dict (for logs and the simulator's history)."""
    return {f.name: getattr(message, f.name) for f in fields(message)}  # type: ignore[arg-type]
