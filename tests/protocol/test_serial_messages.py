"""Message codecs: every type round-trips; every bad payload is refused with the right NAK reason."""

from __future__ import annotations

import pytest

from protocol.serial import (
    BarrierOpen,
    Command,
    Display,
    DisplayStyle,
    Frame,
    Kind,
    NakReason,
    PayloadError,
    UnknownCommand,
    Version,
    Wallet,
    WriteSlot,
    kind_of,
    parse,
)
from protocol.serial.messages import MAX_PHONES, REGISTRY, Field, PhoneSignal, Status

from .golden import GOLDEN


@pytest.mark.parametrize("message", [g[1] for g in GOLDEN], ids=[g[0] for g in GOLDEN])
def test_roundtrip(message: object) -> None:
    frame = message.to_frame(42)  # type: ignore[attr-defined]
    assert parse(frame) == message


def test_codes_fall_in_their_kind_ranges() -> None:
    for code, cls in REGISTRY.items():
        name = cls.__name__
        kind = kind_of(code)
        assert kind is not None, name
    assert kind_of(Command.READ_WALLET) is Kind.REQUEST
    assert kind_of(Command.NAK) is Kind.RESPONSE
    assert kind_of(Command.PASSAGE) is Kind.EVENT
    assert kind_of(0x50) is None


def test_unknown_command() -> None:
    with pytest.raises(UnknownCommand) as caught:
        parse(Frame(1, 0x3F, b""))
    assert caught.value.reason is NakReason.UNKNOWN_COMMAND


@pytest.mark.parametrize(("code", "payload", "reason"), [
    (Command.HEARTBEAT, b"\x00", NakReason.BAD_LENGTH),
    (Command.READ_WALLET, bytes(7), NakReason.BAD_LENGTH),
    (Command.WRITE_SLOT, bytes(72), NakReason.BAD_LENGTH),
    (Command.WRITE_SLOT, bytes(8) + b"\x02" + bytes(64), NakReason.BAD_PAYLOAD),  # slot 2
    (Command.BARRIER_OPEN, b"\x02\x01\x00\x00", NakReason.BAD_PAYLOAD),  # direction 2
    (Command.DISPLAY, b"\x00\x00\x00\x01\xff\x00", NakReason.BAD_PAYLOAD),  # not UTF-8
    (Command.DISPLAY, b"\x00\x00\x00\x05ab\x00", NakReason.BAD_LENGTH),  # line longer than payload
    (Command.DISPLAY, b"\x09\x00\x00\x00\x00", NakReason.BAD_PAYLOAD),  # style 9
    (Command.DISPLAY, b"\x00", NakReason.BAD_LENGTH),
    (Command.LIGHTS, b"\x10\x00", NakReason.BAD_PAYLOAD),  # no such light
    (Command.LIGHTS, b"\x01\x02", NakReason.BAD_PAYLOAD),  # blink 2
    (Command.BUZZER, b"\x07\x00\x00", NakReason.BAD_PAYLOAD),
    (Command.WALLET, bytes(8) + b"\x00" + bytes(5), NakReason.BAD_LENGTH),
    (Command.WALLET, bytes(8) + b"\x07", NakReason.BAD_PAYLOAD),
    (Command.FIELD, b"", NakReason.BAD_LENGTH),
    (Command.FIELD, b"\x02" + bytes(9), NakReason.BAD_LENGTH),
    (Command.VERSION, b"\x01\x00\x00\x01\x05ab", NakReason.BAD_LENGTH),
    (Command.VERSION, b"\x01\x00\x00\x01\x01\xff", NakReason.BAD_PAYLOAD),
    (Command.NAK, b"\x11\x09", NakReason.BAD_PAYLOAD),
])
def test_bad_payloads_get_their_reason(code: int, payload: bytes, reason: NakReason) -> None:
    with pytest.raises(PayloadError) as caught:
        parse(Frame(1, code, payload))
    assert caught.value.reason is reason


def test_display_carries_chinese_and_english() -> None:
    message = Display(DisplayStyle.DENY, 0, "余额不足 请充值", "Insufficient balance - please top up")
    assert parse(message.to_frame(1)) == message


def test_display_too_long_is_refused_when_built() -> None:
    with pytest.raises(PayloadError):
        Display(DisplayStyle.INFO, 0, "字" * 60, "x" * 60)


def test_field_lists_at_most_eight_phones_but_counts_all() -> None:
    phones = tuple(PhoneSignal(i, -40 - i) for i in range(10))
    payload = Field(phones).encode_payload()
    assert payload[0] == 10
    assert parse(Frame(1, Command.FIELD, payload)) == Field(phones[:MAX_PHONES])


def test_wallet_size_follows_status() -> None:
    with pytest.raises(PayloadError):
        Wallet(1, 0, bytes(10))
    with pytest.raises(PayloadError):
        WriteSlot(1, 0, bytes(63))


def test_enum_fields_are_coerced() -> None:
    message = parse(BarrierOpen(1, 2, 100).to_frame(1))
    assert isinstance(message, BarrierOpen) and message.direction.name == "EXIT"
    status = Status(2, 1, 0, 0, 0, 1, -50, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    assert status.position.name == "OPEN" and status.lights.name == "GREEN"


def test_version_model_must_be_ascii() -> None:
    with pytest.raises(UnicodeEncodeError):
        Version(1, 0, 0, 1, "型号").encode_payload()
