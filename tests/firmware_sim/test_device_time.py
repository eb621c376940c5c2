"""Device time (scheduler.py): the simulator's own lateness is not added, and nothing is early.

Every answer must still take at least the request's wire time, the RF time and the answer's wire
time, measured from the controller's side; timestamps are the device times of what happened.
"""

from __future__ import annotations

import threading
import time

import pytest
import serial

from firmware_sim.config import DeviceConfig
from firmware_sim.population import Phone, Population
from firmware_sim.reader import Presence, Reader
from firmware_sim.scheduler import Scheduler
from firmware_sim.sim import Sim
from firmware_sim.wallets import WalletStore
from protocol.serial import (
    Ack,
    BarrierOpen,
    Command,
    Direction,
    FieldChanged,
    FrameDecoder,
    Message,
    ReadWallet,
    RfStatus,
    Wallet,
    WriteOutcome,
    WriteResult,
    WriteSlot,
    parse,
)
from protocol.serial.timing import wire_time

from .conftest import ALICE


def _exchange(port: serial.SerialBase, decoder: FrameDecoder, request: Message, seq: int) -> tuple[
        float, float, Message]:
    """Write `request`; return (clock before the write, clock once its answer's last byte was read,
    the answer)."""
    data = request.to_bytes(seq)
    sent = time.monotonic()
    port.write(data)
    deadline = sent + 2.0
    while time.monotonic() < deadline:
        chunk = port.read(max(1, port.in_waiting))
        got = time.monotonic()
        for frame in decoder.feed(chunk):
            if frame.seq == seq and frame.command < 0xC0:
                return sent, got, parse(frame)
    raise TimeoutError(f"no answer to {request!r}")


def test_answers_never_complete_before_wire_and_rf_time(sim: Sim) -> None:
    reader = sim.config.reader
    with serial.serial_for_url(sim.url(0), baudrate=115200, timeout=0.01) as port:
        decoder = FrameDecoder()
        sim.present(ALICE, walk=False, dwell_s=3.0)
        sim.wait_for(lambda: ALICE in sim.gate(0).reader.field)
        for _ in range(3):
            sent, got, wallet = _exchange(port, decoder, ReadWallet(ALICE), 40 + _)
            assert isinstance(wallet, Wallet) and wallet.status is RfStatus.OK
            assert got - sent >= wire_time(14) + reader.read_ms / 1000 + wire_time(143)
        record = wallet.wallet[:64]
        sent, got, result = _exchange(port, decoder, WriteSlot(ALICE, 0, record), 50)
        assert result == WriteResult(ALICE, 0, WriteOutcome.OK, 64)
        assert got - sent >= wire_time(79) + (reader.write_ms + reader.verify_ms) / 1000 + wire_time(17)


def test_a_request_is_handled_at_its_arrival_never_before(sim: Sim) -> None:
    tap = sim.present(ALICE, walk=True)
    with serial.serial_for_url(sim.url(0), baudrate=115200, timeout=0.01) as port:
        decoder = FrameDecoder()
        sim.wait_for(lambda: ALICE in sim.gate(0).reader.field)
        sent, acked, answer = _exchange(port, decoder, BarrierOpen(Direction.ENTRY, 1, 3000), 60)
    assert answer == Ack(Command.BARRIER_OPEN)
    sim.wait(tap, 5)
    assert tap.authorised_at is not None
    authorised = sim.t0 + tap.authorised_at
    assert authorised >= sent + wire_time(10)  # not before its last byte could have arrived
    assert acked >= authorised + wire_time(7)  # and the Ack left no earlier than that
    rx = [r for r in sim.gate(0).records("rx") if r.data.get("seq") == 60]
    assert rx and rx[0].t == authorised


def test_a_timed_action_happens_at_its_time(sim: Sim) -> None:
    at = sim.now() + 0.1
    tap = sim.present(ALICE, at=at, walk=False, dwell_s=0.25)
    sim.wait(tap, 5)
    assert tap.presented_at == pytest.approx(at, abs=1e-9)
    assert tap.withdrawn_at == pytest.approx(at + 0.25, abs=1e-9)
    placed, removed = sim.gate(0).records("phone")
    assert placed.t == pytest.approx(sim.t0 + at, abs=1e-9) and removed.t > placed.t


def test_field_changed_leaves_no_earlier_than_the_phone_came(sim: Sim) -> None:
    with serial.serial_for_url(sim.url(0), baudrate=115200, timeout=0.01) as port:
        decoder = FrameDecoder()
        at = sim.now() + 0.05
        sim.present(ALICE, at=at, walk=False, dwell_s=0.5)
        while True:
            frames = decoder.feed(port.read(max(1, port.in_waiting)))
            got = time.monotonic()
            if any(isinstance(parse(f), FieldChanged) for f in frames):
                break
    assert got >= sim.t0 + at + wire_time(16)


def test_line_idle_once_everything_queued_has_been_delivered(sim: Sim) -> None:
    device = sim.gate(0)
    sim.wait_for(device.line_idle, timeout=2)  # the Boot event is out
    with serial.serial_for_url(sim.url(0), baudrate=115200, timeout=0.01) as port:
        with sim.lock:
            device.reader.place(Presence(ALICE, 3.0))  # a FieldChanged is queued
            assert not device.line_idle()
        sim.wait_for(device.line_idle, timeout=2)
        got = b""
        deadline = time.monotonic() + 1
        while len(got) < 16 and time.monotonic() < deadline:
            got += port.read(16 - len(got))
        assert len(got) == 16  # every byte was delivered by the time the line was idle


def test_a_phone_pulled_at_a_device_time_before_the_write_began_tears_nothing() -> None:
    """Device times of two threads may be out of order by the simulator's lag: never a negative tear."""
    phone = Phone(ALICE, balance=1000)
    config = DeviceConfig()
    wallets = WalletStore(config.wallets.key)
    Population([phone]).issue(wallets)
    scheduler = Scheduler(threading.RLock())  # not started: nothing fires by itself
    answers: list[Message] = []
    reader = Reader(config.reader, wallets, scheduler, answers.append, lambda kind, data: None)
    reader.place(Presence(ALICE, 3.0))
    before = wallets.wallet(ALICE)
    now = time.monotonic()
    with scheduler.acting_at(now):
        reader.write(ALICE, 1, bytes(64), answers.append)
    with scheduler.acting_at(now - 0.001):
        reader.remove(ALICE)
    result = next(a for a in answers if isinstance(a, WriteResult))
    assert result == WriteResult(ALICE, 1, WriteOutcome.TORN, 0)
    assert wallets.wallet(ALICE) == before
