"""The framer's encode/decode and every recovery case of its docstring."""

from __future__ import annotations

import pytest

from protocol.serial.framer import (
    MAX_FRAME,
    MAX_PAYLOAD,
    START,
    DecodeError,
    Frame,
    FrameDecoder,
    crc16,
    decode,
    encode,
    scan,
)

FRAME = Frame(seq=7, command=0x11, payload=bytes.fromhex("efcdab8967452301"))
WIRE = encode(FRAME)


def test_crc_is_ccitt_false_check_value() -> None:
    assert crc16(b"123456789") == 0x29B1


def test_layout_start_length_seq_command_payload_crc() -> None:
    assert WIRE[0] == START
    assert WIRE[1] == len(FRAME.payload)
    assert WIRE[2:4] == bytes([7, 0x11])
    assert WIRE[4:-2] == FRAME.payload
    assert int.from_bytes(WIRE[-2:], "little") == crc16(WIRE[1:-2])
    assert len(WIRE) == FRAME.wire_length == len(FRAME.payload) + 6


def test_roundtrip_and_bytes_used() -> None:
    assert decode(WIRE) == (len(WIRE), FRAME)


def test_needs_more_bytes_for_a_partial_frame() -> None:
    for cut in range(len(WIRE)):
        assert decode(WIRE[:cut]) == (0, None)


def test_garbage_before_is_dropped_up_to_the_start_byte() -> None:
    result = scan(b"\x00\x13\x37" + WIRE)
    assert (result.used, result.frame, result.error) == (3, None, DecodeError.GARBAGE)


def test_no_start_byte_drops_everything() -> None:
    assert decode(b"\x01\x02\x03") == (3, None)


def test_length_too_large_is_a_false_start() -> None:
    result = scan(bytes([START, MAX_PAYLOAD + 1]) + WIRE)
    assert (result.used, result.error) == (1, DecodeError.LENGTH_TOO_LARGE)


def test_bad_crc_skips_one_byte_only() -> None:
    corrupt = bytearray(WIRE)
    corrupt[5] ^= 0x01
    result = scan(bytes(corrupt))
    assert (result.used, result.frame, result.error) == (1, None, DecodeError.BAD_CRC)


def test_every_single_bit_flip_is_rejected() -> None:
    for index in range(len(WIRE)):
        for bit in range(8):
            corrupt = bytearray(WIRE)
            corrupt[index] ^= 1 << bit
            decoder = FrameDecoder()
            frames = decoder.feed(bytes(corrupt)) + decoder.expire()
            assert FRAME not in frames


def test_decoder_resyncs_after_garbage_inside_and_after() -> None:
    decoder = FrameDecoder()
    other = Frame(8, 0x80, b"\x20")
    stream = b"\xff" + WIRE[:5] + b"\x00\x00" + WIRE + b"\x13" + encode(other) + b"\xa5\x01"
    assert decoder.feed(stream) == [FRAME, other]
    assert decoder.bad_crc == 1  # the cut-off frame, rejected once the real one completed it
    assert decoder.pending == 2  # the trailing false start waits for more bytes
    assert decoder.expire() == [] and decoder.pending == 0


def test_false_start_with_a_plausible_length_waits_for_the_gap() -> None:
    decoder = FrameDecoder()
    # A5 A5 claims 165 payload bytes; the frames behind it come out once the line goes idle.
    assert decoder.feed(b"\xa5" + WIRE + WIRE) == []
    assert decoder.expire() == [FRAME, FRAME]


def test_false_start_swallowing_a_real_frame_recovers_it() -> None:
    decoder = FrameDecoder()
    # A5 0A claims 10 payload bytes: the real frame that follows is inside the false candidate.
    assert decoder.feed(bytes([START, 10]) + WIRE) == [FRAME]
    assert decoder.bad_crc == 1


def test_expire_drops_a_stale_partial_frame_and_rescans() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(bytes([START, 200]) + WIRE) == []  # waits for 206 bytes that never come
    assert decoder.expire() == [FRAME]
    assert decoder.pending == 0


def test_byte_by_byte_feeding() -> None:
    decoder = FrameDecoder()
    frames = []
    for byte in WIRE * 3:
        frames += decoder.feed(bytes([byte]))
    assert frames == [FRAME] * 3


def test_buffer_is_bounded_whatever_it_is_fed() -> None:
    decoder = FrameDecoder()
    decoder.feed(bytes([START, MAX_PAYLOAD]) * 5000 + bytes([START]) * 1000)
    assert decoder.pending < MAX_FRAME
    assert decoder.feed(WIRE) == [FRAME] or decoder.expire() is not None


def test_reset_forgets_a_partial_frame() -> None:
    decoder = FrameDecoder()
    decoder.feed(WIRE[:4])
    decoder.reset()
    assert decoder.pending == 0
    assert decoder.feed(WIRE) == [FRAME]


@pytest.mark.parametrize("bad", [dict(seq=256), dict(command=-1), dict(payload=bytes(MAX_PAYLOAD + 1))])
def test_frame_refuses_impossible_fields(bad: dict[str, object]) -> None:
    fields: dict[str, object] = {"seq": 1, "command": 1, "payload": b""} | bad
    with pytest.raises(ValueError):
        Frame(**fields)  # type: ignore[arg-type]


def test_largest_frame_roundtrips() -> None:
    frame = Frame(255, 255, bytes([START]) * MAX_PAYLOAD)
    assert decode(encode(frame)) == (MAX_FRAME, frame)
