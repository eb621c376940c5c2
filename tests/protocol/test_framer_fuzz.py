"""Property tests: whatever arrives, no exception escapes, no bad CRC is accepted, memory stays bounded."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.serial.framer import MAX_FRAME, MAX_PAYLOAD, Frame, FrameDecoder, crc16, decode, encode
from protocol.serial.messages import PayloadError, parse

frames = st.builds(Frame, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=MAX_PAYLOAD))


def _crc_ok(frame: Frame) -> bool:
    wire = encode(frame)
    return crc16(wire[1:-2]) == int.from_bytes(wire[-2:], "little")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes_never_raise_and_frames_have_good_crc(data: bytes) -> None:
    decoder = FrameDecoder()
    found = decoder.feed(data) + decoder.expire()
    assert decoder.pending < MAX_FRAME
    for frame in found:
        assert _crc_ok(frame)
        with contextlib.suppress(PayloadError):  # refused cleanly, with a NAK reason
            parse(frame)


@settings(max_examples=200, deadline=None)
@given(st.lists(frames, max_size=8), st.lists(st.binary(max_size=40), max_size=9), st.data())
def test_frames_survive_garbage_between_them(sent: list[Frame], garbage: list[bytes],
                                             data: st.DataObject) -> None:
    """Garbage without a START byte between frames never loses or invents a frame."""
    stream = bytearray()
    for index, frame in enumerate(sent):
        if index < len(garbage):
            stream += garbage[index].replace(b"\xa5", b"\x00")
        stream += encode(frame)
    decoder = FrameDecoder()
    chunks = data.draw(st.lists(st.integers(1, 64), max_size=200))
    received, at = [], 0
    for size in chunks:
        received += decoder.feed(stream[at:at + size])
        at += size
    received += decoder.feed(stream[at:])
    assert received == sent


@settings(max_examples=300, deadline=None)
@given(frames, st.integers(0, 10_000), st.integers(0, 7))
def test_a_flipped_bit_is_never_accepted(frame: Frame, where: int, bit: int) -> None:
    wire = bytearray(encode(frame))
    wire[where % len(wire)] ^= 1 << bit
    decoder = FrameDecoder()
    got = decoder.feed(bytes(wire)) + decoder.expire()
    assert frame not in got
    assert all(_crc_ok(f) for f in got)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_decode_consumes_within_the_buffer(data: bytes) -> None:
    used, frame = decode(data)
    assert 0 <= used <= len(data)
    if frame is not None:
        assert used == frame.wire_length and data[:used] == encode(frame)
