"""Gate mechanism through the scripted API and the port: passages, tailgating, forced door."""

from __future__ import annotations

from firmware_sim.client import SerialClient
from firmware_sim.sim import Sim
from protocol.serial import (
    Alarm,
    AlarmKind,
    BarrierChanged,
    BarrierOpen,
    BarrierPosition,
    Direction,
    Display,
    DisplayStyle,
    GetStatus,
    Passage,
    Status,
)

from .conftest import ALICE, BOB


def test_tailgater_raises_an_alarm(sim: Sim, client: SerialClient) -> None:
    tap = sim.present(ALICE, tailgater=True)
    sim.wait_for(lambda: ALICE in sim.gate(0).reader.field)
    client.request(BarrierOpen(Direction.ENTRY, 1, 3000))
    alarm = client.next_event(Alarm, timeout=3)
    assert alarm == Alarm(AlarmKind.TAILGATING, Direction.ENTRY, 1)
    first, second = client.next_event(Passage, timeout=3), client.next_event(Passage, timeout=3)
    assert (first.authorised, second.authorised) == (1, 0)  # type: ignore[attr-defined]
    assert second.entries_total == 2  # type: ignore[attr-defined]
    sim.wait(tap, 5)
    status = client.request(GetStatus())
    assert isinstance(status, Status) and status.tailgating_total == 1 and status.forced_total == 0


def test_forced_door_when_closed(sim: Sim, client: SerialClient) -> None:
    sim.force_door(0, Direction.EXIT)
    assert client.next_event(Alarm) == Alarm(AlarmKind.FORCED_DOOR, Direction.EXIT, 1)
    passage = client.next_event(Passage, timeout=3)
    assert passage == Passage(Direction.EXIT, 0, 0, 1)
    status = client.request(GetStatus())
    assert isinstance(status, Status) and status.position is BarrierPosition.CLOSED


def test_wrong_direction_through_an_open_barrier_is_tailgating(sim: Sim, client: SerialClient) -> None:
    client.request(BarrierOpen(Direction.ENTRY, 1, 2000))
    sim.wait_for(lambda: sim.gate(0).barrier.position is BarrierPosition.OPEN)
    sim.force_door(0, Direction.EXIT)
    assert client.next_event(Alarm) == Alarm(AlarmKind.TAILGATING, Direction.EXIT, 1)


def test_retried_open_admits_one_person_only(sim: Sim, client: SerialClient) -> None:
    frame = BarrierOpen(Direction.ENTRY, 1, 2000).to_bytes(77)
    client.send_raw(frame)
    client.send_raw(frame)  # the controller's retry: same SEQ, same bytes
    client.poll(0.1)
    assert sim.gate(0).barrier.passages_pending == 1
    repeats = [r for r in sim.gate(0).records("rx") if r.data.get("repeat")]
    assert len(repeats) == 1


def test_free_exit_lets_everyone_through(sim: Sim, client: SerialClient) -> None:
    client.request(BarrierOpen(Direction.EXIT, 0, 0))
    taps = [sim.present(card, direction=Direction.EXIT, at=sim.now() + 0.05 * i)
            for i, card in enumerate((ALICE, BOB))]
    for tap in taps:
        sim.wait(tap, 5)
        assert tap.passed_at is not None
    assert sim.gate(0).barrier.alarms[AlarmKind.TAILGATING] == 0
    assert sim.gate(0).barrier.exits == 2
    assert client.next_event(BarrierChanged).position is BarrierPosition.OPENING  # type: ignore[attr-defined]


def test_denied_commuter_walks_away_with_the_wallet_untouched(sim: Sim, client: SerialClient) -> None:
    tap = sim.present(BOB, patience_s=5.0)
    sim.wait_for(lambda: BOB in sim.gate(0).reader.field)
    client.request(Display(DisplayStyle.DENY, 2000, "余额不足 请充值", "Insufficient balance"))
    sim.wait(tap, 3)  # well before the patience runs out: the refusal sends them away
    assert tap.denied and tap.gave_up and tap.passed_at is None
    assert tap.display == ("余额不足 请充值", "Insufficient balance")
    assert tap.wallet_after == tap.wallet_before
    assert tap.withdrawn_at is not None and tap.withdrawn_at >= tap.displays[0][0]
