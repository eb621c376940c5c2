"""Faults at an exact phase of a wallet write (the soak's torn writes and power cuts), and clones."""

from __future__ import annotations

import threading

import pytest
import serial

import fare_core
from firmware_sim.client import RequestTimeout, SerialClient
from firmware_sim.reader import ANSWERED, WRITTEN
from firmware_sim.sim import Sim
from protocol.serial import (
    Boot,
    FieldChanged,
    ReadWallet,
    RfStatus,
    Wallet,
    WriteOutcome,
    WriteResult,
    WriteSlot,
)

from .conftest import ALICE, BOB


def _next_record(sim: Sim, card_id: int, handset: int = 0) -> tuple[bytes, int, fare_core.CardRecord]:
    record, slot = sim.wallets.record(card_id, handset)
    new = record.replace(balance=record.balance - 300, counter=record.counter + 1)
    return fare_core.encode_slot(new, sim.wallets.sam), 1 - slot, record


@pytest.mark.parametrize("phase", [0, 1, 17, 40, 63])
def test_pulled_at_a_byte_tears_the_write_there(sim: Sim, client: SerialClient, phase: int) -> None:
    sim.present(ALICE, walk=False, dwell_s=5.0, patience_s=5.0)
    client.next_event(FieldChanged)
    before = sim.wallet(ALICE)
    new, slot, old = _next_record(sim, ALICE)
    sim.during_write(0, ALICE, phase, "pull")
    result = client.request(WriteSlot(ALICE, slot, new))
    assert result == WriteResult(ALICE, slot, WriteOutcome.TORN, phase)
    start = 64 * slot
    assert sim.wallet(ALICE)[start:start + 64] == new[:phase] + before[start + phase:start + 64]
    assert sim.record(ALICE) == old  # a torn slot is invalid: the old record stays in force
    assert client.request(ReadWallet(ALICE)) == Wallet(ALICE, RfStatus.NO_PHONE)  # the phone left


def test_pulled_after_the_write_landed_is_torn_at_64_and_charged(sim: Sim, client: SerialClient) -> None:
    sim.present(ALICE, walk=False, dwell_s=5.0, patience_s=5.0)
    client.next_event(FieldChanged)
    new, slot, old = _next_record(sim, ALICE)
    sim.during_write(0, ALICE, WRITTEN, "pull")
    assert client.request(WriteSlot(ALICE, slot, new)) == WriteResult(ALICE, slot, WriteOutcome.TORN, 64)
    assert sim.record(ALICE).counter == old.counter + 1  # on the phone, though never verified


@pytest.mark.parametrize(("phase", "lands"), [(0, False), (30, False), (63, False), (WRITTEN, True),
                                              (ANSWERED, True)])
def test_power_cut_during_a_write_answers_nothing_and_reboots(sim: Sim, phase: int, lands: bool) -> None:
    with serial.serial_for_url(sim.url(0), timeout=0.05) as port:
        client = SerialClient(port)
        sim.present(ALICE, walk=False, dwell_s=5.0, patience_s=5.0)
        client.next_event(FieldChanged)
        new, slot, old = _next_record(sim, ALICE)
        sim.during_write(0, ALICE, phase, "power", down_s=0.3)
        port.write(WriteSlot(ALICE, slot, new).to_bytes(70))
        sim.wait_for(lambda: any(r.data.get("fault") == "power_cut" for r in sim.gate(0).records("fault")),
                     timeout=2)
        expected = old.counter + 1 if lands else old.counter
        assert sim.record(ALICE).counter == expected
        if phase != ANSWERED:  # dark at once: the answer was never sent
            with pytest.raises((RequestTimeout, OSError)):  # dark, or the port gone (EIO, SerialException)
                client.request(ReadWallet(ALICE), timeout=0.1, retries=0)
    sim.wait_for(lambda: any(r.data.get("state") == "plugged" for r in sim.gate(0).records("link")),
                 timeout=3)  # rebooted: a fresh port and a Boot event
    with serial.serial_for_url(sim.url(0), timeout=0.05) as port:
        client = SerialClient(port)
        assert any(r.kind == "tx" and isinstance(r.data["message"], Boot)
                   for r in sim.gate(0).records("tx")[1:])
        assert client.request(ReadWallet(ALICE)).status is RfStatus.OK  # type: ignore[attr-defined]
    assert sim.record(ALICE).counter == expected


def test_an_armed_action_runs_once_for_any_phone(sim: Sim, client: SerialClient) -> None:
    ran = threading.Event()
    happened = sim.during_write(0, None, 10, "call", action=ran.set)
    sim.present(BOB, walk=False, dwell_s=5.0, patience_s=5.0)
    client.next_event(FieldChanged)
    new, slot, _ = _next_record(sim, BOB)
    assert not happened.is_set()
    assert client.request(WriteSlot(BOB, slot, new)).outcome is WriteOutcome.OK  # type: ignore[attr-defined]
    assert ran.is_set() and happened.is_set()
    ran.clear()
    new, slot, _ = _next_record(sim, BOB)
    assert client.request(WriteSlot(BOB, slot, new)).outcome is WriteOutcome.OK  # type: ignore[attr-defined]
    assert not ran.is_set()  # one-shot


def test_a_disarmed_fault_never_happens(sim: Sim, client: SerialClient) -> None:
    pulled = sim.during_write(0, ALICE, 5, "pull")
    other = sim.during_write(0, BOB, 5, "pull")
    assert sim.disarm(0, ALICE) == 1
    sim.present(ALICE, walk=False, dwell_s=5.0, patience_s=5.0)
    client.next_event(FieldChanged)
    new, slot, old = _next_record(sim, ALICE)
    assert client.request(WriteSlot(ALICE, slot, new)).outcome is WriteOutcome.OK  # type: ignore[attr-defined]
    assert not pulled.is_set() and sim.record(ALICE).counter == old.counter + 1
    assert sim.disarm(0) == 1 and not other.is_set()  # BOB's, forgotten with all the rest


def test_bad_phase_and_fault_are_refused(sim: Sim) -> None:
    with pytest.raises(ValueError, match="phase"):
        sim.during_write(0, ALICE, ANSWERED + 1, "power")
    with pytest.raises(ValueError, match="fault"):
        sim.during_write(0, ALICE, 3, "melt")
    with pytest.raises(ValueError, match="tears nothing"):
        sim.during_write(0, ALICE, ANSWERED, "pull")


def test_a_clone_is_a_copy_that_is_then_written_apart(make_sim: object) -> None:
    sim: Sim = make_sim(gates=2)  # type: ignore[operator]
    handset = sim.clone(ALICE)
    assert handset == 1 and sim.wallets.handsets(ALICE) == [0, 1]
    assert sim.wallet(ALICE, 1) == sim.wallet(ALICE)
    with serial.serial_for_url(sim.url(1), timeout=0.05) as port:
        client = SerialClient(port)
        sim.present(ALICE, gate=1, walk=False, dwell_s=5.0, patience_s=5.0, handset=handset)
        client.next_event(FieldChanged)
        read = client.request(ReadWallet(ALICE))
        assert isinstance(read, Wallet) and read.wallet == sim.wallet(ALICE, 1)
        new, slot, old = _next_record(sim, ALICE, handset)
        assert client.request(WriteSlot(ALICE, slot, new)).outcome is WriteOutcome.OK  # type: ignore[attr-defined]
    clone = sim.record(ALICE, 1)
    assert clone.counter == old.counter + 1 and clone.balance == old.balance - 300
    assert sim.record(ALICE) == old  # the genuine phone was not touched
    assert [w.handset for w in sim.wallets.writes] == [1]
    with pytest.raises(KeyError):
        sim.present(ALICE, handset=2)
