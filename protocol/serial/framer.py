"""Bytes ⇄ frames for the reader / gate-mechanism serial link. Pure functions, no I/O.

Frame layout (all multi-byte integers little-endian, like the card record)::

    offset  0      1      2      3      4 .. 4+LEN-1     4+LEN  5+LEN
          +------+------+------+------+----------------+------+------+
          | 0xA5 | LEN  | SEQ  | CMD  | PAYLOAD (LEN)  |CRC lo|CRC hi|
          +------+------+------+------+----------------+------+------+
                 |<------------- CRC covers ------------->|

    START   0xA5 marks a candidate frame (it may also occur inside payloads and CRCs: no escaping).
    LEN     payload length, 0 .. MAX_PAYLOAD (240); a whole frame is LEN + 6 bytes (6 .. 246).
    SEQ     request sequence number; a response echoes its request's SEQ, events carry the device's own.
    CMD     command, response or event code (see messages.Command).
    CRC     CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, not reflected, no final xor; check value
            0x29B1 for b"123456789") over LEN, SEQ, CMD and PAYLOAD, computed by the stdlib's
            ``binascii.crc_hqx(data, 0xFFFF)``. Why a CRC-16 rather than a sum: it catches every
            error burst up to 16 bits and every odd number of flipped bits, which is what a UART meets.

Recovery (`scan` says which case applied; `decode` only says how many bytes to drop)::

    garbage before a frame      xx xx A5 03 ..        drop everything before the START byte
    no START at all             xx xx xx              drop everything
    false START, LEN too large  A5 F7 ..              drop one byte (the A5) and rescan
    incomplete frame            A5 03 07 11 ..        wait for more bytes (drop nothing)
    bad CRC (bit flip, garbage  A5 03 07 11 .. ?? ??  drop ONE byte and rescan: a real frame may
      inside, false START)                            start inside what looked like a frame
    garbage after a frame       <frame> xx xx         the frame decodes; the garbage is handled next

A false START followed by a silent line would wait for bytes that never come: the incremental
`FrameDecoder.expire()` drops one byte of a pending partial frame once the line has been idle longer
than a frame gap, then rescans. A bad CRC is never accepted: only a frame whose CRC matches is
returned. `FrameDecoder` holds fewer than MAX_FRAME bytes between calls, whatever it is fed.
"""

from __future__ import annotations

import binascii
import enum
from collections.abc import Iterator
from dataclasses import dataclass

START = 0xA5
HEADER_LEN = 4  # START, LEN, SEQ, CMD
CRC_LEN = 2
OVERHEAD = HEADER_LEN + CRC_LEN
MAX_PAYLOAD = 240
MAX_FRAME = MAX_PAYLOAD + OVERHEAD
_START_BYTES = bytes([START])

Buffer = bytes | bytearray


def crc16(data: Buffer | memoryview) -> int:
    """CRC-16/CCITT-FALSE of `data` (binascii.crc_hqx with init 0xFFFF)."""
    return binascii.crc_hqx(data, 0xFFFF)


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame as it travels: sequence number, command code and raw payload."""

    seq: int
    command: int
    payload: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.seq <= 0xFF:
            raise ValueError(f"seq {self.seq} is not a byte")
        if not 0 <= self.command <= 0xFF:
            raise ValueError(f"command {self.command} is not a byte")
        if len(self.payload) > MAX_PAYLOAD:
            raise ValueError(f"payload of {len(self.payload)} bytes exceeds {MAX_PAYLOAD}")

    @property
    def wire_length(self) -> int:
        """Bytes this frame occupies on the line."""
        return len(self.payload) + OVERHEAD


def encode(frame: Frame) -> bytes:
    """The bytes of `frame` on the wire."""
    body = bytes((len(frame.payload), frame.seq, frame.command)) + frame.payload
    return _START_BYTES + body + crc16(body).to_bytes(2, "little")


class DecodeError(enum.Enum):
    """Why `scan` dropped bytes without returning a frame."""

    GARBAGE = "garbage"  # bytes before any START byte
    LENGTH_TOO_LARGE = "length too large"  # a START byte followed by an impossible LEN
    BAD_CRC = "bad crc"  # a complete candidate whose CRC does not match


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What `scan` found: bytes to drop from the front, the frame if one decoded, the error if any."""

    used: int
    frame: Frame | None = None
    error: DecodeError | None = None


_NEED_MORE = ScanResult(0)


def scan(buffer: Buffer) -> ScanResult:
    """Look at the front of `buffer`; the module docstring lists every case."""
    size = len(buffer)
    if size == 0:
        return _NEED_MORE
    if buffer[0] != START:
        at = buffer.find(_START_BYTES)
        return ScanResult(size if at < 0 else at, None, DecodeError.GARBAGE)
    if size < 2:
        return _NEED_MORE
    length = buffer[1]
    if length > MAX_PAYLOAD:
        return ScanResult(1, None, DecodeError.LENGTH_TOO_LARGE)
    end = length + OVERHEAD
    if size < end:
        return _NEED_MORE
    crc_at = end - CRC_LEN
    if crc16(buffer[1:crc_at]) != buffer[crc_at] | (buffer[crc_at + 1] << 8):
        return ScanResult(1, None, DecodeError.BAD_CRC)
    return ScanResult(end, Frame(buffer[2], buffer[3], bytes(buffer[HEADER_LEN:crc_at])))


def decode(buffer: Buffer) -> tuple[int, Frame | None]:
    """(bytes to drop from the front of `buffer`, the frame decoded or None).

    (0, None) means "need more bytes"; (n > 0, None) means n bytes were garbage or a failed candidate.
    """
    result = scan(buffer)
    return result.used, result.frame


class FrameDecoder:
    """Incremental decoder for a byte stream: feed it what the port read, get whole frames back.

    It counts what it threw away so a device or controller can report link quality. Between calls it
    holds less than MAX_FRAME bytes (at most one partial frame), however much garbage it is fed.
    """

    __slots__ = ("_buffer", "bad_crc", "discarded_bytes", "frames", "length_errors")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.frames = 0
        self.bad_crc = 0
        self.length_errors = 0
        self.discarded_bytes = 0

    @property
    def pending(self) -> int:
        """Bytes of a partial frame waiting for the rest."""
        return len(self._buffer)

    def feed(self, data: Buffer | memoryview) -> list[Frame]:
        """Add `data` and return every frame it completed, in order."""
        view = memoryview(data).cast("B")
        frames: list[Frame] = []
        # Add at most one frame's worth at a time so the buffer stays bounded even for huge inputs.
        for start in range(0, len(view), MAX_FRAME):
            self._buffer += view[start:start + MAX_FRAME]
            frames.extend(self._drain())
        return frames

    def expire(self) -> list[Frame]:
        """The line went idle with a partial frame pending: drop its first byte and rescan.

        Call it when no byte has arrived for longer than a frame gap, so that a false START byte
        cannot hold back the frames behind it.
        """
        if not self._buffer:
            return []
        del self._buffer[0]
        self.discarded_bytes += 1
        return list(self._drain())

    def reset(self) -> None:
        """Forget a partial frame (after the port was reopened)."""
        self.discarded_bytes += len(self._buffer)
        self._buffer.clear()

    def _drain(self) -> Iterator[Frame]:
        buffer = self._buffer
        while buffer:
            result = scan(buffer)
            if result.used == 0:
                return
            del buffer[:result.used]
            if result.frame is not None:
                self.frames += 1
                yield result.frame
                continue
            self.discarded_bytes += result.used
            if result.error is DecodeError.BAD_CRC:
                self.bad_crc += 1
            elif result.error is DecodeError.LENGTH_TOO_LARGE:
                self.length_errors += 1
