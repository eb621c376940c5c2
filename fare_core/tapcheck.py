"""The argument check of a tap, shared by the compiled Tap and the twin's.

One definition, so both cores refuse exactly the same taps. It runs once when a Tap is built, never
inside decide(), so the compiled Tap calling into Python here leaves decide() as fast as before.
"""

from __future__ import annotations

from .reasons import Direction, GateMode
from .record import DAYS_1970_TO_2000, U32_MAX

#: Taps before 2000-01-02 UTC cannot be dated on the card (its day numbers count from 2000).
MIN_TAP_TIME = (DAYS_1970_TO_2000 + 1) * 86400
_DIRECTIONS = tuple(Direction)
_MODES = tuple(GateMode)


def check_tap(card_id: int, station: int, direction: int, time: int, gate_no: int, mode: int,
              min_counter: int, topup: int, action_id: int = 0) -> None:
    """ValueError naming the first argument out of its range (the ranges of the card's fields)."""
    if not 0 <= card_id <= 0xFFFFFFFFFFFFFFFF:
        raise ValueError("card_id must be an unsigned 64-bit integer")
    if not 0 <= station <= 0xFFFF:
        raise ValueError("station must be 0..65535")
    if direction not in _DIRECTIONS:
        raise ValueError("direction must be ENTRY (0) or EXIT (1)")
    if not MIN_TAP_TIME <= time <= U32_MAX:
        raise ValueError("time must be UTC seconds from 2000-01-02 to 2106")
    if mode not in _MODES:
        raise ValueError("mode must be a GateMode")
    if not 0 <= min_counter <= U32_MAX or not 0 <= topup <= 0x7FFFFFFF or not 0 <= gate_no <= 0xFFFF:
        raise ValueError("min_counter, topup or gate_no out of range")
    if not 0 <= action_id <= U32_MAX:
        raise ValueError("action_id must be 0..4294967295 (the card's last_action is 32 bits)")
