"""Golden byte vectors: every frame of the protocol, once, as docs/protocol.md lists them.

(name, message, seq, frame in hex). The hex was produced once, checked against an independent
bit-by-bit CRC-16/CCITT-FALSE (test_golden.py) and by reading the layout tables; a change in the
encoding breaks these tests on purpose.
"""

from __future__ import annotations

from protocol.serial import (
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
    Light,
    Lights,
    Message,
    Nak,
    NakReason,
    Passage,
    PhoneSignal,
    PollField,
    ReadWallet,
    RfStatus,
    Status,
    TornWrite,
    Version,
    Wallet,
    WriteOutcome,
    WriteResult,
    WriteSlot,
)
from protocol.serial.messages import OpenSession, SessionOpened

CARD = 0x0123456789ABCDEF

GOLDEN: list[tuple[str, Message, int, str]] = [
    ("Heartbeat", Heartbeat(), 1, "a50001018cef"),
    ("GetStatus", GetStatus(), 2, "a5000202bc8a"),
    ("GetVersion", GetVersion(), 3, "a5000303aca9"),
    ("OpenSession", OpenSession(0xDEADBEEF), 13, "a5040d04efbeadde2603"),
    ("PollField", PollField(), 4, "a50004106912"),
    ("ReadWallet", ReadWallet(CARD), 5, "a5080511efcdab8967452301d82c"),
    ("WriteSlot", WriteSlot(CARD, 1, bytes(range(64))), 6,
     "a5490612efcdab896745230101000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
     "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f087c"),
    ("BarrierOpen", BarrierOpen(Direction.ENTRY, 1, 5000), 7, "a504072000018813ae77"),
    ("BarrierClose", BarrierClose(), 8, "a50008217671"),
    ("Display", Display(DisplayStyle.OK, 3000, "扣费 2.00 元", "Fare 2.00"), 9,
     "a51d092201b80b0fe689a3e8b4b920322e303020e58583094661726520322e30306f43"),
    ("Lights", Lights(Light.GREEN, 0), 10, "a5020a23010083d1"),
    ("Buzzer", Buzzer(BuzzerPattern.BEEP, 150), 11, "a5030b24019600cd54"),
    ("Ack", Ack(Command.BARRIER_OPEN), 7, "a5010780201e48"),
    ("Nak", Nak(0x3F, NakReason.UNKNOWN_COMMAND), 12, "a5020c813f015d13"),
    ("HeartbeatReply", HeartbeatReply(0x1234, 60000), 1, "a5060182341260ea0000e599"),
    ("Status", Status(BarrierPosition.OPEN, Direction.ENTRY, 1, 0, 1, Light.GREEN, -55, 10, 3, 1, 0, 120, 2,
                      17, 60000, 0x1234), 2,
     "a5250283020001000101c90a000000030000000100000078000000020000001100000060ea00003412c5d9"),
    ("Version", Version(1, 0, 0, 1, "FG-RFSIM-1"), 3, "a50f0384010000010a46472d524653494d2d314192"),
    ("SessionOpened", SessionOpened(0xDEADBEEF, 0x1234), 13, "a5060d85efbeadde34122a3f"),
    ("Field", Field((PhoneSignal(CARD, -42),)), 4, "a50a049001efcdab8967452301d64f6c"),
    ("Wallet", Wallet(CARD, RfStatus.OK, bytes(range(128))), 5,
     "a5890591efcdab896745230100000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
     "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c"
     "4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a"
     "7b7c7d7e7f9fe1"),
    ("Wallet-no-phone", Wallet(CARD, RfStatus.NO_PHONE), 5, "a5090591efcdab8967452301018eca"),
    ("WriteResult", WriteResult(CARD, 1, WriteOutcome.OK, 64), 6, "a50b0692efcdab8967452301010040e5fd"),
    ("FieldChanged", FieldChanged((PhoneSignal(CARD, -42), PhoneSignal(0x1111, -50))), 0x21,
     "a51321c002efcdab8967452301d61111000000000000ceea0d"),
    ("FieldChanged-empty", FieldChanged(()), 0x22, "a50122c000860c"),
    ("TornWrite", TornWrite(CARD, 1, 23), 0x23, "a50a23c1efcdab89674523010117032f"),
    ("BarrierChanged", BarrierChanged(BarrierPosition.OPEN, Direction.ENTRY), 0x24, "a50224c20200c586"),
    ("Passage", Passage(Direction.ENTRY, 1, 11, 3), 0x25, "a50a25c300010b0000000300000044da"),
    ("Alarm", Alarm(AlarmKind.TAILGATING, Direction.ENTRY, 2), 0x26, "a50626c401000200000042a6"),
    ("Boot", Boot(0x1234, 1, 0, 0, 1), 0x01, "a50601c5341201000001fa05"),
]
