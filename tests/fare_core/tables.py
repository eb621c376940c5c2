"""A small fare table built by hand, so decide() tests do not depend on the rules compiler.

Stations 101 A, 102 B, 103 C on the metro (entry/exit), 201 a bus stop (flat fare).
Fares in fen, adult (student is half):      off-peak  peak (weekdays 07:30-09:00 local)
    A-B                                        200       300
    B-C                                        300       400
    A-C                                        400       500
    exit at the entry station after 5 min      200       300
Bus 200 (student 100). Metro<->bus transfer within 90 min: 100 fen off, at most 2 per journey.
Adult daily cap 1000; adult 20% off once 10000 spent in the month; over 4 h inside: +500;
missing exit: the maximum fare from the entry station. China Standard Time, service day from 04:00.
Both categories need 200 fen to enter the metro; a deny-listed phone inside is let out, charged.
"""

from __future__ import annotations

from array import array
from datetime import datetime, timedelta, timezone

from fare_core.table_data import (
    DENYLISTED_EXIT_LET_OUT,
    MINUTES_PER_WEEK,
    MONTH_COUNTS,
    MONTH_DISCOUNTED,
    TableData,
)

CST = timezone(timedelta(hours=8))
A, B, C, BUS = 101, 102, 103, 201
STATIONS = (A, B, C, BUS)
ADULT, STUDENT = 0, 1
METRO_NET, BUS_NET = 0, 1

_OFFPEAK = {(A, B): 200, (B, C): 300, (A, C): 400}
_PEAK = {pair: fare + 100 for pair, fare in _OFFPEAK.items()}


def local(year: int, month: int, day: int, hour: int, minute: int = 0, second: int = 0) -> int:
    """UTC seconds of a China Standard Time wall-clock moment."""
    return int(datetime(year, month, day, hour, minute, second, tzinfo=CST).timestamp())


def _fare(band: dict[tuple[int, int], int], o: int, d: int, same: int) -> int:
    if BUS in (o, d):
        return 0
    if o == d:
        return same
    return band.get((o, d)) or band[(d, o)]


def build_table(**overrides: object) -> TableData:
    fares = array("I")
    for band, same in ((_OFFPEAK, 200), (_PEAK, 300)):
        for divisor in (1, 2):  # adult, student
            for o in STATIONS:
                for d in STATIONS:
                    fares.append(_fare(band, o, d, same) // divisor)
    band_of_minute = bytearray(MINUTES_PER_WEEK)
    for weekday in range(5):
        for minute in range(7 * 60 + 30, 9 * 60):
            band_of_minute[weekday * 1440 + minute] = 1
    missing = array("I")
    for divisor in (1, 2):
        for o in STATIONS:
            missing.append(max(_fare(_PEAK, o, d, 300) for d in STATIONS) // divisor)
    fields: dict[str, object] = dict(
        version=7, created_at=local(2026, 11, 1, 0), name="hand-built test table",
        utc_offset_min=480, day_start_min=240,
        station_ids=array("H", STATIONS), station_network=bytes([0, 0, 0, 1]),
        network_names=("metro", "bus"), network_flat=bytes([0, 1]),
        category_names=("adult", "student"), band_names=("offpeak", "peak"),
        band_of_minute=bytes(band_of_minute), fares=fares,
        flat_fares=array("I", [0, 200, 0, 100, 0, 200, 0, 100]),
        transfer_discount=array("I", [0, 100, 100, 0]), transfer_percent=bytes(4),
        transfer_window_s=array("I", [0, 5400, 5400, 0]), max_transfers=2,
        daily_cap=array("I", [1000, 0]), max_inside_s=4 * 3600, overstay_surcharge=500,
        same_station_window_s=300, same_station_fare=array("I", [0, 0]),
        missing_exit_fare=missing, anti_passback_s=1200, min_entry_balance=array("I", [200, 200]),
        max_balance=100000, denylisted_exit=DENYLISTED_EXIT_LET_OUT,
        # the adult's monthly scheme: 20% off once 10000 fen are spent, on every network
        month_start_min=240, monthly_flags=bytes(2), monthly_tier_first=array("I", [0, 1, 1]),
        monthly_tier_from=array("I", [10000]), monthly_tier_percent=bytes([20]),
        monthly_networks=bytes([MONTH_COUNTS | MONTH_DISCOUNTED] * 4), weekly_cap=array("I", [0, 0]),
        week_rolling=0, offset_change_at=array("I"), offset_change_min=array("i"),
        date_override_day=array("I"), date_override_as=b"", overdraft_limit=0, overdraft_taps=0,
    )
    fields.update(overrides)
    table = TableData(**fields)  # type: ignore[arg-type]
    table.validate()
    return table
