"""Every fault, over real ports: the line corrupts, the device hangs, the cable is pulled."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import serial

import fare_core
from firmware_sim.client import RequestTimeout, SerialClient
from firmware_sim.config import DeviceConfig, FaultsConfig, RatesConfig, ReaderConfig
from firmware_sim.faults import FaultKind, FaultRates, LineFaults
from firmware_sim.sim import Sim
from protocol.serial import GetStatus, Heartbeat, HeartbeatReply, ReadWallet, Status, WriteSlot
from protocol.serial.framer import Frame, encode

from .conftest import ALICE


def _repeats(sim: Sim) -> int:
    return sum(1 for r in sim.gate(0).records("rx") if r.data.get("repeat"))


@pytest.mark.parametrize("kind", [FaultKind.BIT_FLIP, FaultKind.DROP, FaultKind.DUPLICATE, FaultKind.NOISE])
def test_corrupted_response_is_retried_and_answered_from_the_cache(sim: Sim, client: SerialClient,
                                                                   kind: FaultKind) -> None:
    client.request(Heartbeat())
    sim.inject(0, kind)
    reply = client.request(Heartbeat())
    assert isinstance(reply, HeartbeatReply)
    assert sim.gate(0).to_gate.injected[kind] == 1
    if client.retries_used:  # the corrupted copy was lost: the retry was answered, not re-executed
        assert _repeats(sim) == client.retries_used
        assert client.decoder.discarded_bytes > 0
    else:  # a noise burst or duplicate outside the frame leaves it intact, and is skipped as garbage
        assert kind in (FaultKind.NOISE, FaultKind.DUPLICATE)


def test_every_flip_position_in_a_response_recovers(sim: Sim, client: SerialClient) -> None:
    client.request(Heartbeat())  # the Boot event has gone out: the next frame is our answer
    for _ in range(12):
        sim.inject(0, FaultKind.BIT_FLIP)
        assert isinstance(client.request(Heartbeat()), HeartbeatReply)
    assert client.retries_used == 12  # every single flipped frame was refused by the CRC check
    assert client.decoder.frames >= 12


@pytest.mark.parametrize("kind", [FaultKind.BIT_FLIP, FaultKind.DROP, FaultKind.DUPLICATE])
def test_corrupted_request_is_dropped_by_the_device_then_retried(sim: Sim, client: SerialClient,
                                                                  kind: FaultKind) -> None:
    client.request(Heartbeat())
    sim.inject(0, kind, direction="to_device")
    assert isinstance(client.request(Heartbeat()), HeartbeatReply)
    # at least one retry; a loaded machine may need more (the retry can land on the dropped frame's
    # remains before the device's idle timer has discarded them)
    assert client.retries_used >= 1
    assert sim.gate(0).decoder.discarded_bytes > 0


def test_bad_crc_is_counted_by_the_device(sim: Sim, client: SerialClient) -> None:
    wire = bytearray(encode(Frame(5, 0x02, b"")))
    wire[-1] ^= 0xFF
    client.send_raw(bytes(wire) + b"\x00\x13\x37")
    status = client.request(GetStatus())
    assert isinstance(status, Status)
    assert status.rx_bad_crc == 1
    assert status.rx_discarded_bytes == len(wire) + 3
    assert status.rx_frames == 2  # only the client's OpenSession and the GetStatus


def test_noisy_line_by_rates_every_request_still_answered(make_sim: Callable[..., Sim]) -> None:
    rates = RatesConfig(bit_flip=0.002, drop=0.001, duplicate=0.001, noise_bursts_per_s=20)
    config = DeviceConfig(faults=FaultsConfig(seed=7, to_gate=rates, to_device=rates))
    sim = make_sim(config)
    with serial.serial_for_url(sim.url(0), timeout=0.05) as port:
        client = SerialClient(port)
        for _ in range(30):
            assert isinstance(client.request(GetStatus(), retries=5), Status)
    injected = sim.gate(0).to_gate.injected
    assert injected[FaultKind.NOISE] > 0
    assert client.decoder.discarded_bytes > 0


def test_hang_times_out_then_recovers(sim: Sim, client: SerialClient) -> None:
    client.request(Heartbeat())
    sim.hang(0, 0.6)
    with pytest.raises(RequestTimeout):
        client.request(Heartbeat(), timeout=0.1, retries=1)
    sim.wait_for(lambda: not sim.gate(0).hung, timeout=3)
    assert isinstance(client.request(Heartbeat()), HeartbeatReply)


def test_rf_response_lost_in_a_hang_is_retried(sim: Sim, client: SerialClient) -> None:
    sim.present(ALICE, walk=False, dwell_s=3.0)
    sim.wait_for(lambda: ALICE in sim.gate(0).reader.field)
    sim.hang(0, 0.2)
    wallet = client.request(ReadWallet(ALICE), timeout=0.3, retries=3)
    assert wallet.wallet == sim.wallet(ALICE)  # type: ignore[attr-defined]


def _read_until_error(port: serial.SerialBase, limit_s: float = 3.0) -> BaseException | None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            port.read(64)
        except (serial.SerialException, OSError) as error:
            return error
    return None


def test_unplug_raises_on_the_gate_side_then_the_port_comes_back(make_sim: Callable[..., Sim],
                                                                 tmp_path: Path) -> None:
    link = tmp_path / "reader0"
    sim = make_sim(links=[link])
    with serial.serial_for_url(str(link), timeout=0.05) as port:
        assert isinstance(SerialClient(port).request(Heartbeat()), HeartbeatReply)
        sim.unplug(0, 0.3)
        assert isinstance(_read_until_error(port), serial.SerialException)
    sim.wait_for(lambda: sim.gate(0).link.is_open, timeout=3)
    assert link.is_symlink()  # a new pty (the kernel may reuse the number) behind the same name
    with serial.serial_for_url(str(link), timeout=0.05) as port:
        assert isinstance(SerialClient(port).request(Heartbeat()), HeartbeatReply)


def test_tcp_transport_and_unplug(make_sim: Callable[..., Sim]) -> None:
    sim = make_sim(transport="tcp")
    url = sim.url(0)
    assert url.startswith("socket://127.0.0.1:")
    with serial.serial_for_url(url, timeout=0.05) as port:
        client = SerialClient(port)
        assert isinstance(client.request(Heartbeat()), HeartbeatReply)
        sim.unplug(0, 0.3)
        assert isinstance(_read_until_error(port), serial.SerialException)
    sim.wait_for(lambda: sim.gate(0).link.is_open, timeout=3)
    with serial.serial_for_url(url, timeout=0.05) as port:
        assert isinstance(SerialClient(port).request(Heartbeat()), HeartbeatReply)


def test_line_faults_are_seeded_and_counted() -> None:
    rates = FaultRates(bit_flip=0.05, drop=0.05, duplicate=0.05)
    data = bytes(range(256)) * 4
    first, second = LineFaults(rates, seed=3), LineFaults(rates, seed=3)
    assert first.apply(data) == second.apply(data) != data
    assert all(count > 0 for kind, count in first.injected.items() if kind is not FaultKind.NOISE)


def test_fault_parameters_are_checked() -> None:
    with pytest.raises(ValueError):
        FaultRates(bit_flip=1.5)
    with pytest.raises(ValueError):
        LineFaults().arm(FaultKind.DROP, 0)
    sim = Sim()  # never started: refused before anything runs
    try:
        with pytest.raises(ValueError):
            sim.inject(0, "melt")
        with pytest.raises(ValueError):
            sim.inject(0, FaultKind.DROP, direction="sideways")
        with pytest.raises(IndexError):
            sim.hang(3, 1.0)
    finally:
        sim.close()


def test_power_cycle_reboots_and_tears_a_write_in_progress(make_sim: Callable[..., Sim],
                                                           tmp_path: Path) -> None:
    link = tmp_path / "reader0"
    sim = make_sim(DeviceConfig(reader=ReaderConfig(write_ms=200)), links=[link])
    with serial.serial_for_url(str(link), timeout=0.05) as port:
        client = SerialClient(port)
        first = client.request(Heartbeat())
        assert isinstance(first, HeartbeatReply)
        sim.present(ALICE, walk=False, dwell_s=10)
        sim.wait_for(lambda: ALICE in sim.gate(0).reader.field)
        before = sim.wallet(ALICE)
        record, slot = sim.wallets.record(ALICE)
        new = fare_core.encode_slot(record.replace(balance=1, counter=record.counter + 1), sim.wallets.sam)
        port.write(WriteSlot(ALICE, 1 - slot, new).to_bytes(90))
        sim.wait_for(lambda: sim.gate(0).reader.busy is not None)
        sim.power_cycle(0, 0.2)
        assert isinstance(_read_until_error(port), serial.SerialException)
    sim.wait_for(lambda: sim.gate(0).link.is_open, timeout=3)
    assert sim.record(ALICE) == record  # torn by the power cut: the old record is in force
    landed = sim.wallets.writes[-1].bytes_written
    start = 64 * (1 - slot)
    assert sim.wallet(ALICE)[start:start + 64] == new[:landed] + before[start + landed:start + 64]
    with serial.serial_for_url(str(link), timeout=0.05) as port:
        client = SerialClient(port)
        reply = client.request(Heartbeat())
        assert isinstance(reply, HeartbeatReply) and reply.boot_id != first.boot_id
        status = client.request(GetStatus())
        assert isinstance(status, Status) and status.rx_frames == 3 and status.entries_total == 0
        assert client.request(ReadWallet(ALICE)).wallet == sim.wallet(ALICE)  # type: ignore[attr-defined]
