"""The serial protocol between a gate controller and its reader / gate mechanism.

Importable on its own, without side effects: the gate controller imports it, the simulator serves it.
`framer` turns bytes into frames and back, `messages` frames into typed messages, `timing` says how
long a request may take before it counts as lost, `transactions` holds the controller's request
rules (SEQs, resends, BUSY) without I/O, for the gate and the simulator's client alike.
docs/protocol.md describes it for gate engineers.
"""

from .framer import MAX_FRAME, MAX_PAYLOAD, START, Frame, FrameDecoder, crc16, decode, encode
from .messages import (
    PROTOCOL_VERSION,
    RESPONSE_TO,
    Ack,
    Alarm,
    AlarmKind,
    BarrierChanged,
    BarrierClose,
    BarrierOpen,
    BarrierPosition,
    Boot,
    Buzzer,
    BuzzerPattern,
    Command,
    Direction,
    Display,
    DisplayStyle,
    Field,
    FieldChanged,
    GetStatus,
    GetVersion,
    Heartbeat,
    HeartbeatReply,
    Kind,
    Light,
    Lights,
    Message,
    Nak,
    NakReason,
    OpenSession,
    Passage,
    PayloadError,
    PhoneSignal,
    PollField,
    ReadWallet,
    RfStatus,
    SessionOpened,
    Status,
    TornWrite,
    UnknownCommand,
    Version,
    Wallet,
    WriteOutcome,
    WriteResult,
    WriteSlot,
    kind_of,
    parse,
)

__all__ = [
    "MAX_FRAME", "MAX_PAYLOAD", "PROTOCOL_VERSION", "RESPONSE_TO", "START",
    "Ack", "Alarm", "AlarmKind", "BarrierChanged", "BarrierClose", "BarrierOpen", "BarrierPosition",
    "Boot", "Buzzer", "BuzzerPattern", "Command", "Direction", "Display", "DisplayStyle", "Field",
    "FieldChanged", "Frame", "FrameDecoder", "GetStatus", "GetVersion", "Heartbeat", "HeartbeatReply",
    "Kind", "Light", "Lights", "Message", "Nak", "NakReason", "OpenSession", "Passage", "PayloadError",
    "PhoneSignal", "PollField", "ReadWallet", "RfStatus", "SessionOpened", "Status", "TornWrite",
    "UnknownCommand", "Version", "Wallet",
    "WriteOutcome", "WriteResult", "WriteSlot", "crc16", "decode", "encode", "kind_of", "parse",
]
