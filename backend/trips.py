"""Trips from a card's chain of taps, walked in counter order (backend/chain.py).

An allowed entry opens a trip and the next exit closes it; an entry while one is open marks that one
`missing_exit` (and, when the tap carries Flag.MISSING_EXIT, gives it the charge the entry took for
it); an exit with none open is `no_entry`; a boarding on a flat-fare network is a whole trip. The walk
is plain: the processor gives it the taps that count (an unconfirmed write only once it landed) and
the trip left open before them, and stores what comes out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from fare_core.reasons import Direction, Flag

from .tables import TapRow, TripRow


@dataclass
class TripWalk:
    card_id: str
    is_flat: Callable[[TapRow], bool]  # is the tap's station on a flat-fare network (per its fare table)?
    open: TripRow | None = None  # the trip open before the walk's first tap
    new: list[TripRow] = field(default_factory=list)
    joined: list[tuple[TapRow, TripRow]] = field(default_factory=list)  # each tap and its trip

    def walk(self, taps: Iterable[TapRow]) -> None:
        for tap in taps:
            self.step(tap)

    def step(self, tap: TapRow) -> None:
        if self.is_flat(tap):  # a bus boarding: one tap is the whole ride
            self._leave_open(tap, keep_charge=True)
            trip = self._trip(tap, state="complete", entry=True, exit_=True, fare=tap.fare)
        elif tap.direction == Direction.ENTRY:
            fare = tap.fare - self._leave_open(tap, keep_charge=False)
            trip = self._trip(tap, state="open", entry=True, fare=fare)
            self.open = trip
        else:
            trip = self.open or self._trip(tap, state="no_entry", fare=0)
            trip.exit_tap_id, trip.exit_station, trip.exit_time = tap.tap_id, tap.station_id, tap.time
            trip.fare += tap.fare
            if trip.state == "open":
                trip.state = "complete"
            self.open = None
        self.joined.append((tap, trip))

    def _leave_open(self, tap: TapRow, *, keep_charge: bool) -> int:
        """A new ride starts while one is open: the open one never exited. Returns the part of the
        tap's fare that was that trip's missing-exit charge (moved onto it)."""
        if self.open is None:
            return 0
        self.open.state = "missing_exit"
        moved = 0
        if tap.flags & Flag.MISSING_EXIT and not keep_charge:
            moved = tap.fare
            self.open.fare += moved
        self.open = None
        return moved

    def _trip(self, tap: TapRow, *, state: str, fare: int, entry: bool = False,
              exit_: bool = False) -> TripRow:
        trip = TripRow(card_id=self.card_id, state=state, fare=fare)
        if entry:
            trip.entry_tap_id, trip.entry_station, trip.entry_time = tap.tap_id, tap.station_id, tap.time
        if exit_:
            trip.exit_tap_id, trip.exit_station, trip.exit_time = tap.tap_id, tap.station_id, tap.time
        self.new.append(trip)
        return trip
