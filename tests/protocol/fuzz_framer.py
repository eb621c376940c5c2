"""Coverage-guided fuzzing of the framer and message parser with atheris (libFuzzer).

    python3 tests/firmware_sim/fuzz_framer.py -atheris_runs=200000     # or -max_total_time=60

Whatever bytes arrive: no exception but PayloadError escapes, every frame returned has a good CRC and
re-encodes to the exact bytes it came from, and the decoder keeps less than one frame pending.
atheris is optional (it has wheels for CPython 3.11 on x86-64 Linux); test_atheris.py runs a short,
bounded campaign when it is installed and skips otherwise, so CI never depends on it.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from protocol.serial.framer import MAX_FRAME, FrameDecoder, crc16, encode
    from protocol.serial.messages import PayloadError, parse


def test_one_input(data: bytes) -> None:
    decoder = FrameDecoder()
    half = len(data) // 2
    frames = decoder.feed(data[:half]) + decoder.feed(data[half:])
    assert decoder.pending < MAX_FRAME
    frames += decoder.expire()
    for frame in frames:
        wire = encode(frame)
        assert crc16(wire[1:-2]) == int.from_bytes(wire[-2:], "little")
        assert wire in data
        with contextlib.suppress(PayloadError):
            message = parse(frame)
            assert parse(message.to_frame(frame.seq)) == message


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
