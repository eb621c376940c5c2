"""Golden byte vectors, checked both ways, against an independent CRC and against docs/protocol.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.serial import Command, decode, parse
from protocol.serial.messages import REGISTRY

from .golden import GOLDEN

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _crc_bitwise(data: bytes) -> int:
    """CRC-16/CCITT-FALSE the long way, independent of binascii."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


@pytest.mark.parametrize(("name", "message", "seq", "wire"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_vector(name: str, message: object, seq: int, wire: str) -> None:
    data = bytes.fromhex(wire)
    assert message.to_bytes(seq).hex() == wire  # type: ignore[attr-defined]
    used, frame = decode(data)
    assert used == len(data) and frame is not None
    assert frame.seq == seq
    assert parse(frame) == message
    assert _crc_bitwise(data[1:-2]) == int.from_bytes(data[-2:], "little")


def test_every_message_type_has_a_golden_vector() -> None:
    covered = {type(message) for _, message, _, _ in GOLDEN}
    assert covered == set(REGISTRY.values())
    assert {int(c) for c in Command} == set(REGISTRY)


def test_docs_list_every_golden_vector() -> None:
    text = DOC.read_text(encoding="utf-8").replace(" ", "").replace("\n", "")
    missing = [name for name, _, _, wire in GOLDEN if wire not in text]
    assert not missing, f"docs/protocol.md lacks the vectors of {missing}"
