"""The gate mechanism: barrier motion, the passage sensor, tailgating and forced-door alarms.

    CLOSED --open--> OPENING --travel--> OPEN --last authorised person cleared / hold expired-->
    CLOSING --travel--> CLOSED

An authorisation (BarrierOpen) grants `passages` people in one direction (0 = unlimited until
BarrierClose, for emergency free exit). Each person is seen by the passage sensor for passage_ms;
the decision is taken when they step in:

    barrier OPEN in their direction and an authorisation left -> authorised passage
    barrier not CLOSED otherwise (open, opening, closing)     -> TAILGATING alarm
    barrier CLOSED                                            -> FORCED_DOOR alarm

The barrier never starts closing while someone is in the passage (safety), and a new
BarrierOpen while closing reopens it. Every method runs under the sim lock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from protocol.serial.messages import (
    Alarm,
    AlarmKind,
    BarrierChanged,
    BarrierPosition,
    Direction,
    Message,
    Passage,
)

from .config import BarrierConfig
from .scheduler import Scheduler, Timer

UNLIMITED = -1


class Barrier:
    def __init__(self, config: BarrierConfig, scheduler: Scheduler, emit: Callable[[Message], None],
                 log: Callable[[str, dict[str, Any]], None]) -> None:
        self.config = config
        self.scheduler = scheduler
        self._emit = emit
        self._log = log
        self.position = BarrierPosition.CLOSED
        self.direction = Direction.ENTRY
        self.authorised = 0  # passages left, or UNLIMITED
        self.hold_s = 5.0
        self.in_passage = 0  # people on the sensor right now
        self.entries = 0
        self.exits = 0
        self.alarms: dict[AlarmKind, int] = dict.fromkeys(AlarmKind, 0)
        self._motion: Timer | None = None
        self._hold: Timer | None = None
        self._generation = 0  # bumped by reset(): passages timed before a power cut are forgotten

    def reset(self) -> None:
        """Power-up state: closed, no authorisation, counters zero (the motor homes while off)."""
        self._cancel(self._motion)
        self._cancel(self._hold)
        self._generation += 1
        self.position = BarrierPosition.CLOSED
        self.direction = Direction.ENTRY
        self.authorised = 0
        self.in_passage = 0
        self.entries = self.exits = 0
        self.alarms = dict.fromkeys(AlarmKind, 0)

    @property
    def passages_pending(self) -> int:
        return 255 if self.authorised == UNLIMITED else min(255, self.authorised)

    def open(self, direction: Direction, passages: int, hold_ms: int) -> None:
        if direction != self.direction:
            self.authorised = 0  # one direction at a time: a new direction replaces the old grant
        self.direction = direction
        if passages == 0 or self.authorised == UNLIMITED:
            self.authorised = UNLIMITED
        else:
            self.authorised += passages
        self.hold_s = hold_ms / 1000
        if self.position in (BarrierPosition.CLOSED, BarrierPosition.CLOSING):
            self._move(BarrierPosition.OPENING, BarrierPosition.OPEN)
        elif self.position is BarrierPosition.OPEN:
            self._arm_hold()

    def close(self) -> None:
        """Cancel every authorisation and close as soon as the passage is clear."""
        self.authorised = 0
        self._close_when_clear()

    def person_enters(self, direction: Direction) -> None:
        """Someone steps into the passage going `direction` (the sensor sees them)."""
        authorised = (self.position is BarrierPosition.OPEN and direction == self.direction
                      and self.authorised != 0)
        if authorised:
            if self.authorised != UNLIMITED:
                self.authorised -= 1
            self._cancel(self._hold)
        else:
            kind = AlarmKind.FORCED_DOOR if self.position is BarrierPosition.CLOSED else AlarmKind.TAILGATING
            self.alarms[kind] += 1
            self._log("alarm", {"alarm": kind.name, "direction": direction.name})
            self._emit(Alarm(kind, direction, self.alarms[kind]))
        self.in_passage += 1
        self.scheduler.call_later(self.config.passage_ms / 1000, self._person_cleared, direction, authorised,
                                  self._generation)

    def _person_cleared(self, direction: Direction, authorised: bool, generation: int) -> None:
        if generation != self._generation:
            return  # the device was power-cycled while this person was in the passage
        self.in_passage -= 1
        if direction is Direction.ENTRY:
            self.entries = (self.entries + 1) & 0xFFFFFFFF
        else:
            self.exits = (self.exits + 1) & 0xFFFFFFFF
        self._log("passage", {"direction": direction.name, "authorised": authorised})
        self._emit(Passage(direction, int(authorised), self.entries, self.exits))
        if self.authorised == 0:
            self._close_when_clear()
        elif self.position is BarrierPosition.OPEN:
            self._arm_hold()

    def _close_when_clear(self) -> None:
        if self.in_passage == 0 and self.position in (BarrierPosition.OPEN, BarrierPosition.OPENING):
            self._cancel(self._hold)
            self._move(BarrierPosition.CLOSING, BarrierPosition.CLOSED)

    def _move(self, moving: BarrierPosition, end: BarrierPosition) -> None:
        self._cancel(self._motion)
        self._set(moving)
        self._motion = self.scheduler.call_later(self.config.travel_ms / 1000, self._arrive, end)

    def _arrive(self, end: BarrierPosition) -> None:
        self._motion = None
        self._set(end)
        if end is BarrierPosition.OPEN:
            if self.authorised == 0:  # closed while opening: turn round
                self._close_when_clear()
            else:
                self._arm_hold()

    def _set(self, position: BarrierPosition) -> None:
        self.position = position
        self._log("barrier", {"position": position.name, "direction": self.direction.name})
        self._emit(BarrierChanged(position, self.direction))

    def _arm_hold(self) -> None:
        self._cancel(self._hold)
        if self.authorised != UNLIMITED and self.hold_s > 0:
            self._hold = self.scheduler.call_later(self.hold_s, self._hold_expired)

    def _hold_expired(self) -> None:
        self._hold = None
        self.authorised = 0
        self._log("hold_expired", {})
        self._close_when_clear()

    @staticmethod
    def _cancel(timer: Timer | None) -> None:
        if timer is not None:
            timer.cancel()
