"""pytest-benchmark: the simulator's own latency on a ReadWallet over a real pty at 115200 baud.

Run: python3 -m pytest benchmarks/test_loop_bench.py --benchmark-only
The floor is what a real reader needs: the request's wire time, the RF read time and the answer's
wire time (14 + 143 bytes, 25 ms). extra_info gives the time above that floor, measured from just
before the write to the answer's last byte read (the simulator's wake-ups and the pty's two hops);
the assertion is honesty: never below the floor.
"""

from __future__ import annotations

import time
from typing import Any

import serial

from firmware_sim.population import Phone, Population
from firmware_sim.sim import Sim
from protocol.serial import FrameDecoder, ReadWallet, RfStatus, Wallet, parse
from protocol.serial.timing import wire_time

CARD = 0x5EED0001


def test_read_wallet_above_the_floor(benchmark: Any) -> None:
    with Sim(population=Population([Phone(CARD, balance=1000)])) as sim, \
            serial.serial_for_url(sim.url(0), baudrate=115200, timeout=0.01) as port:
        sim.present(CARD, walk=False, dwell_s=60.0, patience_s=60.0)
        sim.wait_for(lambda: CARD in sim.gate(0).reader.field)
        sim.wait_for(sim.gate(0).line_idle)
        port.reset_input_buffer()
        decoder = FrameDecoder()
        floor = wire_time(14) + sim.config.reader.read_ms / 1000 + wire_time(143)
        above: list[float] = []
        seq = [0]

        def exchange() -> None:
            seq[0] = seq[0] % 255 + 1
            sent = time.monotonic()
            port.write(ReadWallet(CARD).to_bytes(seq[0]))
            while True:
                frames = decoder.feed(port.read(max(1, port.in_waiting)))
                got = time.monotonic()
                answers = [parse(f) for f in frames if f.seq == seq[0] and f.command < 0xC0]
                if answers:
                    assert isinstance(answers[0], Wallet) and answers[0].status is RfStatus.OK
                    above.append(got - sent - floor)
                    return

        benchmark.pedantic(exchange, rounds=100, warmup_rounds=3)
    above.sort()
    benchmark.extra_info["floor_ms"] = round(floor * 1000, 3)
    benchmark.extra_info["above_floor_ms_p50"] = round(above[len(above) // 2] * 1000, 3)
    p99 = above[min(len(above) - 1, int(len(above) * 0.99))]
    benchmark.extra_info["above_floor_ms_p99"] = round(p99 * 1000, 3)
    assert above[0] >= 0  # honest: never faster than a real reader on a real line
