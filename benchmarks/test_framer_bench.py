"""pytest-benchmark: the framer, and a whole tap exchange over a real pty at the line's own speed.

Run: python3 -m pytest benchmarks/test_framer_bench.py --benchmark-only
Baselines in the same run: `crc16` alone over the same bytes is the floor under encode/decode; for
the tap exchange, the same exchange at 4,000,000 baud (wire time ~0.7 ms) shows the software's own
overhead, and extra_info carries the wire time n x 10 / baud the 115,200-baud row cannot beat.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import serial

import fare_core
from firmware_sim.client import SerialClient
from firmware_sim.config import DeviceConfig, LinkConfig, ReaderConfig
from firmware_sim.population import Phone, Population
from firmware_sim.sim import Sim
from protocol.serial import (
    BarrierClose,
    BarrierOpen,
    Direction,
    FrameDecoder,
    ReadWallet,
    Wallet,
    WriteSlot,
    crc16,
    decode,
    encode,
    parse,
)
from protocol.serial.timing import wire_time

CARD = 0x0123456789ABCDEF
WALLET_FRAME = Wallet(CARD, 0, bytes(range(128))).to_frame(5)
WALLET_WIRE = encode(WALLET_FRAME)
STREAM = b"".join(Wallet(CARD, 0, bytes(range(128))).to_bytes(i % 256) for i in range(100))


def test_crc16_baseline(benchmark: Any) -> None:
    body = WALLET_WIRE[1:-2]
    assert benchmark(crc16, body) == int.from_bytes(WALLET_WIRE[-2:], "little")


def test_encode_wallet_frame(benchmark: Any) -> None:
    assert benchmark(encode, WALLET_FRAME) == WALLET_WIRE


def test_decode_wallet_frame(benchmark: Any) -> None:
    assert benchmark(decode, WALLET_WIRE) == (len(WALLET_WIRE), WALLET_FRAME)


def test_parse_wallet_message(benchmark: Any) -> None:
    assert benchmark(parse, WALLET_FRAME).wallet == bytes(range(128))


def test_decoder_stream_of_100_frames(benchmark: Any) -> None:
    frames = benchmark(lambda: FrameDecoder().feed(STREAM))
    assert len(frames) == 100
    benchmark.extra_info["bytes"] = len(STREAM)


@pytest.fixture(params=[115200, 4_000_000], ids=["115200-baud", "4M-baud-baseline"])
def tap_loop(request: pytest.FixtureRequest) -> Iterator[tuple[Sim, SerialClient, int]]:
    baud = request.param
    config = DeviceConfig(link=LinkConfig(baud=baud), reader=ReaderConfig(read_ms=0, write_ms=0, verify_ms=0))
    sim = Sim(config, Population([Phone(CARD, balance=10_000)])).start()
    port = serial.serial_for_url(sim.url(0), baudrate=baud, timeout=0.05)
    try:
        sim.present(CARD, walk=False, dwell_s=600)
        sim.wait_for(lambda: CARD in sim.gate(0).reader.field)
        yield sim, SerialClient(port, baud=baud), baud
    finally:
        port.close()
        sim.close()


def test_tap_exchange_over_pty(benchmark: Any, tap_loop: tuple[Sim, SerialClient, int]) -> None:
    """ReadWallet, WriteSlot, BarrierOpen with RF times set to zero: what is left is the line + software."""
    sim, client, baud = tap_loop
    sam = sim.wallets.sam

    def tap() -> None:
        wallet = client.request(ReadWallet(CARD))
        record, slot = fare_core.read_wallet(wallet.wallet, CARD, sam)  # type: ignore[attr-defined]
        new = fare_core.encode_slot(record.replace(counter=record.counter + 1), sam)
        client.request(WriteSlot(CARD, 1 - slot, new))
        client.request(BarrierOpen(Direction.ENTRY, 1, 0))
        client.request(BarrierClose())

    benchmark.pedantic(tap, rounds=30, warmup_rounds=2)
    to_device = 14 + 79 + 10 + 6
    to_gate = 143 + 17 + 7 + 7
    benchmark.extra_info["bytes_to_device"] = to_device
    benchmark.extra_info["bytes_to_gate"] = to_gate
    benchmark.extra_info["wire_time_ms"] = round(wire_time(to_device + to_gate, baud) * 1000, 3)
    client.drain_events()


def test_pacer_delivery_over_pty(benchmark: Any) -> None:
    """2,000 bytes through the Pacer into a pty, timed at the reading end: never below n x 10 / baud."""
    import threading
    import time

    from firmware_sim.transport import Pacer, PtyLink, open_port

    link = PtyLink()
    port = open_port(link.name, timeout=0.5)
    data = bytes(range(250)) * 8
    measured: list[float] = []

    def deliver() -> None:
        pacer = Pacer(115200)
        start = time.monotonic()
        sender = threading.Thread(target=pacer.send, args=(data, link.write))
        sender.start()
        got = b""
        while len(got) < len(data):
            got += port.read(len(data) - len(got))
        measured.append(time.monotonic() - start)
        sender.join()
        assert got == data

    try:
        benchmark.pedantic(deliver, rounds=5)
    finally:
        port.close()
        link.close()
    wire = wire_time(len(data), 115200)
    benchmark.extra_info["wire_time_ms"] = round(wire * 1000, 3)
    benchmark.extra_info["min_measured_over_wire"] = round(min(measured) / wire, 4)
    assert min(measured) >= wire
