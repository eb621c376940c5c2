"""Every request answered over a real pseudo-terminal, every event seen, refusals with reasons."""

from __future__ import annotations

import pytest
import serial

import fare_core
from firmware_sim.client import NakError, SerialClient
from firmware_sim.sim import Sim
from protocol.serial import (
    PROTOCOL_VERSION,
    Ack,
    BarrierChanged,
    BarrierClose,
    BarrierOpen,
    BarrierPosition,
    Boot,
    Buzzer,
    BuzzerPattern,
    Command,
    Direction,
    Display,
    DisplayStyle,
    Field,
    FieldChanged,
    Frame,
    GetStatus,
    GetVersion,
    Heartbeat,
    HeartbeatReply,
    Light,
    Lights,
    NakReason,
    PollField,
    ReadWallet,
    RfStatus,
    Status,
    Version,
    Wallet,
    WriteOutcome,
    WriteResult,
    WriteSlot,
    encode,
)
from protocol.serial.messages import Nak, Passage

from .conftest import ALICE, BOB


def test_heartbeat_status_version(sim: Sim, client: SerialClient) -> None:
    reply = client.request(Heartbeat())
    assert isinstance(reply, HeartbeatReply) and reply.boot_id == sim.gate(0).boot_id
    status = client.request(GetStatus())
    assert isinstance(status, Status)
    assert status.position is BarrierPosition.CLOSED
    assert status.rssi_threshold_dbm == sim.config.reader.rssi_threshold_dbm
    assert status.rx_frames == 3  # the client's OpenSession, the heartbeat and this request
    version = client.request(GetVersion())
    assert version == Version(*sim.config.firmware, PROTOCOL_VERSION, sim.config.model)


def test_boot_event_reaches_a_controller_that_is_already_listening() -> None:
    sim = Sim()  # not started: open the port first, then power the device up
    try:
        with serial.serial_for_url(sim.url(0), timeout=0.05) as port:
            sim.start()
            boot = SerialClient(port).next_event(Boot, timeout=2)
            assert isinstance(boot, Boot) and boot.boot_id == sim.gate(0).boot_id
    finally:
        sim.close()


def test_poll_field_and_field_changed(sim: Sim, client: SerialClient) -> None:
    assert client.request(PollField()) == Field(())
    sim.present(ALICE, walk=False, dwell_s=0.5)
    event = client.next_event(FieldChanged)
    assert [p.card_id for p in event.phones] == [ALICE]  # type: ignore[attr-defined]
    field = client.request(PollField())
    assert isinstance(field, Field) and field.phones[0].card_id == ALICE
    assert field.phones[0].rssi_dbm == sim.config.reader.rssi(3.0)
    gone = client.next_event(FieldChanged)
    assert gone == FieldChanged(())


def test_read_and_write_a_wallet(sim: Sim, client: SerialClient) -> None:
    tap = sim.present(ALICE, walk=False, dwell_s=2.0)
    client.next_event(FieldChanged)
    wallet = client.request(ReadWallet(ALICE))
    assert isinstance(wallet, Wallet) and wallet.status is RfStatus.OK
    assert wallet.wallet == sim.wallet(ALICE)
    record, slot = fare_core.read_wallet(wallet.wallet, ALICE, sim.wallets.sam)
    new = fare_core.encode_slot(record.replace(balance=record.balance - 200, counter=record.counter + 1),
                                sim.wallets.sam)
    result = client.request(WriteSlot(ALICE, 1 - slot, new))
    assert result == WriteResult(ALICE, 1 - slot, WriteOutcome.OK, 64)
    assert sim.record(ALICE).balance == 800
    assert sim.wallet(ALICE)[64 * (1 - slot):64 * (2 - slot)] == new
    sim.wait(tap, 5)


def test_barrier_display_lights_buzzer_and_passage(sim: Sim, client: SerialClient) -> None:
    tap = sim.present(ALICE)
    client.next_event(FieldChanged)
    shown = Display(DisplayStyle.OK, 2000, "扣费 2.00 元", "Fare ¥2.00")
    assert client.request(shown) == Ack(Command.DISPLAY)
    assert client.request(Lights(Light.GREEN)) == Ack(Command.LIGHTS)
    assert client.request(Buzzer(BuzzerPattern.BEEP, 100)) == Ack(Command.BUZZER)
    assert client.request(BarrierOpen(Direction.ENTRY, 1, 3000)) == Ack(Command.BARRIER_OPEN)
    assert client.next_event(BarrierChanged) == BarrierChanged(BarrierPosition.OPENING, Direction.ENTRY)
    assert client.next_event(BarrierChanged) == BarrierChanged(BarrierPosition.OPEN, Direction.ENTRY)
    passage = client.next_event(Passage, timeout=3)
    assert passage == Passage(Direction.ENTRY, 1, 1, 0)
    assert client.next_event(BarrierChanged) == BarrierChanged(BarrierPosition.CLOSING, Direction.ENTRY)
    assert client.next_event(BarrierChanged) == BarrierChanged(BarrierPosition.CLOSED, Direction.ENTRY)
    sim.wait(tap, 5)
    assert tap.display == ("扣费 2.00 元", "Fare ¥2.00")
    assert tap.barrier_opened_at is not None and tap.passed_at is not None
    assert tap.barrier_opened_at < tap.passed_at
    panel = sim.gate(0).panel
    assert panel.lights is Light.GREEN and panel.buzzer is BuzzerPattern.BEEP
    status = client.request(GetStatus())
    assert isinstance(status, Status) and status.entries_total == 1 and status.lights is Light.GREEN


def test_barrier_close_cancels_and_hold_expires(sim: Sim, client: SerialClient) -> None:
    client.request(BarrierOpen(Direction.EXIT, 1, 100))
    assert client.next_event(BarrierChanged).position is BarrierPosition.OPENING  # type: ignore[attr-defined]
    assert client.next_event(BarrierChanged).position is BarrierPosition.OPEN  # type: ignore[attr-defined]
    # nobody passes: the hold time runs out and the barrier closes by itself
    assert client.next_event(BarrierChanged).position is BarrierPosition.CLOSING  # type: ignore[attr-defined]
    assert client.next_event(BarrierChanged).position is BarrierPosition.CLOSED  # type: ignore[attr-defined]
    client.request(BarrierOpen(Direction.EXIT, 0, 0))  # free exit: open until told otherwise
    client.next_event(BarrierChanged)
    client.next_event(BarrierChanged)
    assert client.request(BarrierClose()) == Ack(Command.BARRIER_CLOSE)
    assert client.next_event(BarrierChanged).position is BarrierPosition.CLOSING  # type: ignore[attr-defined]


@pytest.mark.parametrize(("raw", "reason"), [
    (Frame(9, 0x3F, b""), NakReason.UNKNOWN_COMMAND),
    (Frame(9, 0x50, b""), NakReason.UNKNOWN_COMMAND),  # unused range
    (Frame(9, Command.ACK, b"\x01"), NakReason.UNKNOWN_COMMAND),  # a response is not a request
    (Frame(9, Command.READ_WALLET, b"\x01\x02"), NakReason.BAD_LENGTH),
    (Frame(9, Command.DISPLAY, b"\x00\x00\x00\x01\xff\x00"), NakReason.BAD_PAYLOAD),
])
def test_refusals_are_nak_with_reason_never_a_crash(sim: Sim, client: SerialClient, raw: Frame,
                                                     reason: NakReason) -> None:
    client.send_raw(encode(raw))
    client.poll(0.1)
    assert client._responses.pop(9) == Nak(raw.command, reason)
    assert isinstance(client.request(Heartbeat()), HeartbeatReply)  # still alive


def test_second_rf_operation_is_busy(sim: Sim, port: serial.SerialBase) -> None:
    client = SerialClient(port)
    sim.present(ALICE, walk=False, dwell_s=2.0)
    client.next_event(FieldChanged)
    port.write(ReadWallet(ALICE).to_bytes(100) + ReadWallet(ALICE).to_bytes(101))
    client.poll(0.2)
    assert client._responses.pop(101) == Nak(Command.READ_WALLET, NakReason.BUSY)
    assert client._responses.pop(100).status is RfStatus.OK  # type: ignore[attr-defined]


def test_far_phone_is_never_reported_nor_read(sim: Sim, client: SerialClient) -> None:
    sim.pocket(BOB, distance_cm=40, dwell_s=0.5)
    sim.wait_for(lambda: BOB in sim.gate(0).reader.field)
    assert client.request(PollField()) == Field(())
    assert client.request(ReadWallet(BOB)) == Wallet(BOB, RfStatus.NO_PHONE)
    result = client.request(WriteSlot(BOB, 1, bytes(64)))
    assert result == WriteResult(BOB, 1, WriteOutcome.NO_PHONE, 0)
    assert sim.wallet(BOB)[64:] == bytes(64) and sim.wallets.writes == []
    assert not [e for e in client.drain_events() if isinstance(e, FieldChanged)]


def test_unknown_phone_reads_no_phone(sim: Sim, client: SerialClient) -> None:
    assert client.request(ReadWallet(0xDEAD)) == Wallet(0xDEAD, RfStatus.NO_PHONE)


def test_nak_error_from_the_client(sim: Sim, client: SerialClient) -> None:
    sim.present(ALICE, walk=False, dwell_s=1.0)
    client.next_event(FieldChanged)
    client.send_raw(ReadWallet(ALICE).to_bytes(200))
    with pytest.raises(NakError) as caught:
        client.request(ReadWallet(ALICE))
    assert caught.value.reason is NakReason.BUSY
