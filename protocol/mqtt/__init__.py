"""The MQTT contract between gates and the backend: topics (`topics`) and payload schemas (`messages`).

Both ends import it from here; docs/mqtt.md is the prose version (QoS, retained, the ack protocol).
"""

from .messages import (
    MAX_LIST_ITEMS,
    MAX_TAPS_PER_MESSAGE,
    U32_MAX,
    U64_MAX,
    Action,
    ActionListMessage,
    CardId,
    CardIdList,
    Checksum,
    Committed,
    DenyListDeltaMessage,
    DenyListSnapshotMessage,
    FareTableMessage,
    Fen,
    GateCommand,
    GateIdStr,
    GateNo,
    GateState,
    GateStatus,
    Payload,
    ResendRequest,
    Seq,
    SnapshotRequest,
    StationId,
    TapMessage,
    UpdateKind,
    UtcTime,
    Version,
    encode,
    encode_taps,
)
from .topics import Topics, gate_id, parse_gate_id, tap_id

__all__ = [
    "MAX_LIST_ITEMS", "MAX_TAPS_PER_MESSAGE", "U32_MAX", "U64_MAX",
    "Action", "ActionListMessage", "CardId", "CardIdList", "Checksum", "Committed", "DenyListDeltaMessage",
    "DenyListSnapshotMessage", "FareTableMessage", "Fen", "GateCommand", "GateIdStr", "GateNo", "GateState",
    "GateStatus", "Payload", "ResendRequest", "Seq", "SnapshotRequest", "StationId", "TapMessage", "Topics",
    "UpdateKind", "UtcTime", "Version", "encode", "encode_taps", "gate_id", "parse_gate_id", "tap_id",
]
