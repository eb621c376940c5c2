"""The reader's RF behaviour: distance control, two phones, torn writes, slow and flaky phones."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import serial

import fare_core
from firmware_sim.client import SerialClient
from firmware_sim.config import DeviceConfig, ReaderConfig
from firmware_sim.population import Phone, Population
from firmware_sim.sim import Sim
from protocol.serial import (
    Field,
    FieldChanged,
    PollField,
    ReadWallet,
    RfStatus,
    TornWrite,
    Wallet,
    WriteOutcome,
    WriteResult,
    WriteSlot,
)
from protocol.serial.timing import RF_WRITE_MAX_S

from .conftest import ALICE, BOB, CAROL, DAVE


def _next_record(sim: Sim, card_id: int) -> tuple[bytes, int, fare_core.CardRecord]:
    record, slot = sim.wallets.record(card_id)
    new = record.replace(balance=record.balance - 300, counter=record.counter + 1)
    return fare_core.encode_slot(new, sim.wallets.sam), 1 - slot, record


def test_rssi_follows_distance_and_threshold_is_about_ten_cm() -> None:
    reader = ReaderConfig()
    assert reader.rssi(2) > reader.rssi(5) > reader.rssi(10) > reader.rssi(40)
    assert reader.rssi(9) >= reader.rssi_threshold_dbm > reader.rssi(12)
    assert 9 < reader.range_cm() < 11


def test_two_phones_are_both_reported_strongest_first(sim: Sim, client: SerialClient) -> None:
    sim.present(ALICE, distance_cm=2, walk=False, dwell_s=1.0)
    sim.present(BOB, distance_cm=6, walk=False, dwell_s=1.0)
    sim.wait_for(lambda: len(sim.gate(0).reader.in_range()) == 2)
    field = client.request(PollField())
    assert isinstance(field, Field)
    assert [p.card_id for p in field.phones] == [ALICE, BOB]
    assert field.phones[0].rssi_dbm > field.phones[1].rssi_dbm
    reports = [client.next_event(FieldChanged), client.next_event(FieldChanged)]
    assert [len(r.phones) for r in reports] == [1, 2]  # type: ignore[attr-defined]


def test_neighbours_pocket_is_ignored_while_a_tap_goes_on(sim: Sim, client: SerialClient) -> None:
    sim.pocket(BOB, distance_cm=35, dwell_s=1.0)
    sim.present(ALICE, walk=False, dwell_s=1.0)
    event = client.next_event(FieldChanged)
    assert [p.card_id for p in event.phones] == [ALICE]  # type: ignore[attr-defined]
    assert client.request(ReadWallet(BOB)) == Wallet(BOB, RfStatus.NO_PHONE)
    assert client.request(ReadWallet(ALICE)).status is RfStatus.OK  # type: ignore[attr-defined]


def test_phone_moving_out_of_range_leaves_the_field(sim: Sim, client: SerialClient) -> None:
    sim.present(ALICE, walk=False, dwell_s=2.0)
    client.next_event(FieldChanged)
    sim.move(ALICE, 30)
    assert client.next_event(FieldChanged) == FieldChanged(())
    assert client.request(ReadWallet(ALICE)) == Wallet(ALICE, RfStatus.NO_PHONE)


@pytest.fixture
def slow_rf(make_sim: Callable[..., Sim]) -> Sim:
    return make_sim(DeviceConfig(reader=ReaderConfig(read_ms=150, write_ms=200, verify_ms=50)))


def test_pulled_phone_tears_the_write_and_keeps_the_old_record(slow_rf: Sim) -> None:
    sim = slow_rf
    with serial.serial_for_url(sim.url(0), timeout=0.05) as port:
        client = SerialClient(port)
        sim.present(ALICE, walk=False, dwell_s=5.0)
        client.next_event(FieldChanged)
        before = sim.wallet(ALICE)
        new, slot, old = _next_record(sim, ALICE)
        port.write(WriteSlot(ALICE, slot, new).to_bytes(50))
        sim.wait_for(lambda: sim.gate(0).reader.busy is not None)
        sim.withdraw(ALICE)
        result = client.next_event(TornWrite, timeout=2)
        client.poll(0.05)
        answer = client._responses.pop(50)
    assert isinstance(result, TornWrite) and result.slot == slot
    landed = result.bytes_written
    assert 0 <= landed < 64
    assert answer == WriteResult(ALICE, slot, WriteOutcome.TORN, landed)
    start = 64 * slot
    after = sim.wallet(ALICE)
    assert after[start:start + 64] == new[:landed] + before[start + landed:start + 64]  # byte-exact
    assert after[64 * (1 - slot):64 * (2 - slot)] == before[64 * (1 - slot):64 * (2 - slot)]
    record, in_force = fare_core.read_wallet(after, ALICE, sim.wallets.sam)
    assert record == old and in_force == 1 - slot  # the old record, not charged


def test_pulled_phone_during_read_is_lost(slow_rf: Sim) -> None:
    sim = slow_rf
    with serial.serial_for_url(sim.url(0), timeout=0.05) as port:
        client = SerialClient(port)
        sim.present(BOB, walk=False, dwell_s=5.0)
        client.next_event(FieldChanged)
        port.write(ReadWallet(BOB).to_bytes(60))
        sim.wait_for(lambda: sim.gate(0).reader.busy is not None)
        sim.withdraw(BOB)
        client.poll(0.1)
        assert client._responses.pop(60) == Wallet(BOB, RfStatus.LOST)


def test_slow_phone_still_completes(sim: Sim, client: SerialClient) -> None:
    sim.present(CAROL, walk=False, dwell_s=3.0)
    client.next_event(FieldChanged)
    new, slot, _ = _next_record(sim, CAROL)
    assert client.request(ReadWallet(CAROL)).status is RfStatus.OK  # type: ignore[attr-defined]
    assert client.request(WriteSlot(CAROL, slot, new)).outcome is WriteOutcome.OK  # type: ignore[attr-defined]
    write = sim.gate(0).records("write")[-1].data
    reader = sim.config.reader
    assert write["outcome"] == "OK"
    assert write["rf_s"] == pytest.approx(3.0 * (reader.write_ms + reader.verify_ms) / 1000)
    assert sim.record(CAROL).balance == 500


def test_flaky_write_fails_verify_and_the_old_record_stays(sim: Sim, client: SerialClient) -> None:
    sim.present(DAVE, walk=False, dwell_s=3.0)
    client.next_event(FieldChanged)
    new, slot, old = _next_record(sim, DAVE)
    result = client.request(WriteSlot(DAVE, slot, new))
    assert result == WriteResult(DAVE, slot, WriteOutcome.FAILED, 64)
    assert sim.record(DAVE) == old


def test_too_slow_a_phone_is_cut_off_by_the_rf_timeout(make_sim: Callable[..., Sim]) -> None:
    sim = make_sim(DeviceConfig(reader=ReaderConfig(read_ms=100, write_ms=100)),
                   population=Population([Phone(ALICE, balance=700, slowness=5.0)]))
    with serial.serial_for_url(sim.url(0), timeout=0.05) as port:
        client = SerialClient(port)
        sim.present(ALICE, walk=False, dwell_s=5.0)
        client.next_event(FieldChanged)
        assert client.request(ReadWallet(ALICE)) == Wallet(ALICE, RfStatus.LOST)  # 500 ms > 300 ms
        new, slot, old = _next_record(sim, ALICE)
        result = client.request(WriteSlot(ALICE, slot, new))
    assert isinstance(result, WriteResult) and result.outcome is WriteOutcome.TORN
    assert result.bytes_written == int(64 * RF_WRITE_MAX_S / 0.5)
    assert sim.record(ALICE) == old
