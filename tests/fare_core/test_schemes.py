"""The fare rules of issue #13 an operator writes, priced on both implementations (the `impl` fixture):
monthly tiers by spend (Beijing, fare_core/examples/beijing.toml) and by rides (Guangzhou, guangzhou.toml)
across their thresholds, the month turning at local midnight, weekly caps (rolling and calendar),
summer time at its changeover hours (America/Toronto, Europe/London), public holidays priced as a
Sunday, boundary stations at the cheaper zone, a category discount on some networks, the same-station
rule where an od table is silent (lakeshore.toml), and the overdraft.
"""

from __future__ import annotations

import os
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import fare_core
from fare_core import Direction, Flag, Reason
from fare_core.compiler import band_at, compile_rules
from fare_core.rules import RulesError, rules_from_data
from fare_core.table_data import TableData, local_minute_of_week, utc_offset_at

from .test_decide import Rider

ENTRY, EXIT = Direction.ENTRY, Direction.EXIT
EXAMPLES = Path(fare_core.__file__).parent / "examples"
ADULT, STUDENT = 0, 1


def example(name: str, **changes: Any) -> dict[str, Any]:
    with (EXAMPLES / f"{name}.toml").open("rb") as file:
        return {**tomllib.load(file), **changes}


def compiled(name: str, **changes: Any) -> TableData:
    return compile_rules(rules_from_data(example(name, **changes)), 1, created_at=0)


def at(zone: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    """UTC seconds of a local wall-clock time in a zone."""
    return int(datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone)).timestamp())


def beijing(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return at("Asia/Shanghai", year, month, day, hour, minute)


def toronto(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return at("America/Toronto", year, month, day, hour, minute)


# --- Beijing: three spend tiers, the last ending the discount ---

BEIJING = compiled("beijing")
PINGGUOYUAN, XIDAN, YUQUAN_LU, BUS = 101, 113, 105, 9001  # Pingguoyuan-Xidan 17.2 km: 500 fen


def test_beijing_spend_tiers_across_every_threshold(impl: Any) -> None:
    """500-fen rides: full price until 100 yuan has been spent (the 20th ride reaches it and is still
    full), 20% off until 150 yuan, 50% off until 400 yuan, then full price again; all in November."""
    r = Rider(impl, table=BEIJING, balance=100_000)
    fares, spent = [], []
    for k in range(140):
        day, hour = 1 + k // 5, 7 + 2 * (k % 5)
        out = r.trip(PINGGUOYUAN, XIDAN, beijing(2026, 11, day, hour), beijing(2026, 11, day, hour, 40))
        assert out.allowed, out
        fares.append(out.fare)
        spent.append(r.record.month_spent)
        assert bool(out.flags & Flag.MONTHLY_DISCOUNT) == (out.fare < 500)
    # 20 x 500 = 10000; 13 x 400 = 5200 (15200); 100 x 250 = 25000 (40200); then 500 again
    assert fares == [500] * 20 + [400] * 13 + [250] * 100 + [500] * 7
    assert spent[19] == 10_000 and spent[32] == 15_200 and spent[132] == 40_200
    assert r.record.month_rides == 140


def test_beijing_bus_rides_neither_count_nor_get_the_discount(impl: Any) -> None:
    r = Rider(impl, table=BEIJING, balance=100_000, month_number=(2026 - 2000) * 12 + 10,
              month_spent=12_000, month_rides=30)
    bus = r.tap(BUS, ENTRY, beijing(2026, 11, 10, 9))
    assert (bus.fare, bus.flags & Flag.MONTHLY_DISCOUNT) == (100, 0)
    assert (r.record.month_spent, r.record.month_rides) == (12_000, 30)
    rail = r.trip(PINGGUOYUAN, YUQUAN_LU, beijing(2026, 11, 10, 12), beijing(2026, 11, 10, 12, 20))
    assert (rail.fare, r.record.month_spent) == (320, 12_320)  # 400 at 20% off


def test_beijing_month_turns_at_local_midnight_not_the_service_day(impl: Any) -> None:
    """A ride exiting at 00:10 on 1 December is December's, though its service day is 30 November."""
    r = Rider(impl, table=BEIJING, balance=100_000, month_number=(2026 - 2000) * 12 + 10,
              month_spent=20_000, month_rides=50)
    late = r.trip(PINGGUOYUAN, XIDAN, beijing(2026, 11, 30, 23, 30), beijing(2026, 11, 30, 23, 59))
    assert late.fare == 250  # still November, 50% off
    night = r.trip(PINGGUOYUAN, XIDAN, beijing(2026, 12, 1, 0, 0), beijing(2026, 12, 1, 0, 10))
    assert (night.fare, night.flags & Flag.MONTHLY_DISCOUNT) == (500, 0)
    rec = r.record
    assert (rec.month_number, rec.month_spent, rec.month_rides) == ((2026 - 2000) * 12 + 11, 500, 1)
    assert rec.day_number == late_service_day(2026, 11, 30)  # the daily cap's day did not move


def late_service_day(year: int, month: int, day: int) -> int:
    """Days since 2000-01-01 of a date (the card's day numbers)."""
    return (datetime(year, month, day, tzinfo=UTC).date() - datetime(2000, 1, 1, tzinfo=UTC).date()).days


def test_a_month_that_turns_at_the_service_day_when_the_rules_say_so(impl: Any) -> None:
    table = compiled("beijing", month_start="04:00")
    r = Rider(impl, table=table, balance=100_000, month_number=(2026 - 2000) * 12 + 10,
              month_spent=20_000, month_rides=50)
    night = r.trip(PINGGUOYUAN, XIDAN, beijing(2026, 12, 1, 0, 0), beijing(2026, 12, 1, 0, 10))
    assert night.fare == 250 and r.record.month_number == (2026 - 2000) * 12 + 10


# --- Guangzhou: ride-count tiers over bus and metro together ---

GUANGZHOU = compiled("guangzhou")
G_XILANG, G_KENGKOU, G_BUS = 101, 102, 9001  # Xilang-Kengkou 1.16 km: 200 fen


def test_guangzhou_ride_tiers_count_bus_and_metro_together(impl: Any) -> None:
    """5% off (190 fen) from the first ride, 40% off (120 fen) from the 16th; a bus ride (200 fen) is a
    ride like a metro trip. One ride a day, so the daily cap and transfers stay out of it."""
    r = Rider(impl, table=GUANGZHOU, balance=50_000)
    fares = []
    for day in range(1, 21):
        if day % 3 == 0:
            out = r.tap(G_BUS, ENTRY, at("Asia/Shanghai", 2026, 11, day, 10))
        else:
            out = r.trip(G_XILANG, G_KENGKOU, at("Asia/Shanghai", 2026, 11, day, 10),
                         at("Asia/Shanghai", 2026, 11, day, 10, 20))
        assert out.allowed and out.flags & Flag.MONTHLY_DISCOUNT, out
        fares.append(out.fare)
    assert fares == [190] * 15 + [120] * 5
    assert r.record.month_rides == 20
    # the next month starts counting again
    first = r.tap(G_BUS, ENTRY, at("Asia/Shanghai", 2026, 12, 1, 0, 5))
    assert (first.fare, r.record.month_rides) == (190, 1)


def test_the_student_has_no_monthly_scheme_in_guangzhou(impl: Any) -> None:
    r = Rider(impl, table=GUANGZHOU, category=1, balance=5000, month_number=(2026 - 2000) * 12 + 10,
              month_rides=40)
    out = r.tap(G_BUS, ENTRY, at("Asia/Shanghai", 2026, 11, 5, 10))
    assert (out.fare, out.flags & Flag.MONTHLY_DISCOUNT) == (100, 0)


# --- Lakeshore: weekly caps, summer time, holidays, zones, categories, same station, overdraft ---

LAKESHORE = compiled("lakeshore")
UNION, HARBOUR, BLUFFS, PICKERING = 1, 2, 3, 4
KING_BAY, SPADINA, L_BUS = 11, 12, 50


def test_rolling_weekly_cap_runs_seven_days_from_the_first_charged_tap(impl: Any) -> None:
    """Four 380-cent rides a day, capped at 1300 a day: 3 x 1300 = 3900, then the week's 4700 cap lets
    800 through on day 4 and nothing until the 7 days from Wednesday's first tap have run out."""
    r = Rider(impl, table=LAKESHORE, balance=40_000)
    per_day = []
    start = datetime(2026, 6, 10)  # a Wednesday
    for offset in range(8):
        day = start + timedelta(days=offset)
        total = 0
        for hour in (10, 12, 14, 20):
            out = r.trip(UNION, HARBOUR, toronto(day.year, day.month, day.day, hour),
                         toronto(day.year, day.month, day.day, hour, 30))
            assert out.allowed, out
            total += out.fare
        per_day.append(total)
        if offset == 3:
            assert out.flags & Flag.WEEKLY_CAPPED and out.reason == Reason.CAP_REACHED
    assert per_day == [1300, 1300, 1300, 800, 0, 0, 0, 1300]
    rec = r.record
    assert rec.week_spent == 1300 and rec.week_start == late_service_day(2026, 6, 17)


def test_calendar_weekly_cap_starts_again_on_monday(impl: Any) -> None:
    table = compiled("lakeshore", weekly_cap_period="calendar_week")
    r = Rider(impl, table=table, balance=40_000)
    per_day = []
    for day in range(10, 16):  # Wednesday 10 June to Monday 15 June 2026
        total = sum(r.trip(UNION, HARBOUR, toronto(2026, 6, day, hour), toronto(2026, 6, day, hour, 30)).fare
                    for hour in (10, 12, 14, 20))
        per_day.append(total)
    assert per_day == [1300, 1300, 1300, 800, 0, 1300]


def test_compiled_offsets_match_the_time_zone_every_hour() -> None:
    zone = ZoneInfo("America/Toronto")
    start, end = toronto(2026, 1, 1), toronto(2030, 12, 31)
    for utc in range(start, end, 3600):
        expected = datetime.fromtimestamp(utc, zone).utcoffset()
        assert expected is not None
        assert utc_offset_at(LAKESHORE, utc) * 60 == expected.total_seconds(), utc


@pytest.mark.parametrize(("zone", "change_utc", "before", "after"), [
    # Toronto: 2026-03-08 02:00 EST becomes 03:00 EDT; 2026-11-01 02:00 EDT becomes 01:00 EST
    ("America/Toronto", datetime(2026, 3, 8, 7, tzinfo=UTC), -300, -240),
    ("America/Toronto", datetime(2026, 11, 1, 6, tzinfo=UTC), -240, -300),
    # London: 2026-03-29 01:00 GMT becomes 02:00 BST; 2026-10-25 02:00 BST becomes 01:00 GMT
    ("Europe/London", datetime(2026, 3, 29, 1, tzinfo=UTC), 0, 60),
    ("Europe/London", datetime(2026, 10, 25, 1, tzinfo=UTC), 60, 0),
])
def test_the_offset_changes_at_the_changeover_second(zone: str, change_utc: datetime, before: int,
                                                     after: int) -> None:
    table = LAKESHORE if zone == "America/Toronto" else compiled("lakeshore", time_zone=zone)
    moment = int(change_utc.timestamp())
    assert (utc_offset_at(table, moment - 1), utc_offset_at(table, moment)) == (before, after)
    # Sunday's local minute of the week on either side of the change
    local_before = (moment - 1 + before * 60) % 86400 // 60
    assert local_minute_of_week(table, moment - 1) == 6 * 1440 + local_before
    assert local_minute_of_week(table, moment) == 6 * 1440 + (moment + after * 60) % 86400 // 60


def test_peak_stays_at_local_hours_across_summer_time(impl: Any) -> None:
    """07:30 local is peak on the Friday before and the Monday after the spring change, though it is
    12:30 UTC one day and 11:30 UTC the other; 11:30 UTC on the Friday (06:30 EST) is off-peak."""
    peak = LAKESHORE.band_names.index("peak")
    assert band_at(LAKESHORE, toronto(2026, 3, 6, 7, 30)) == peak
    assert band_at(LAKESHORE, toronto(2026, 3, 9, 7, 30)) == peak
    assert band_at(LAKESHORE, int(datetime(2026, 3, 6, 11, 30, tzinfo=UTC).timestamp())) != peak
    for when in (toronto(2026, 3, 6, 7, 30), toronto(2026, 3, 9, 7, 30), toronto(2026, 11, 2, 7, 30)):
        r = Rider(impl, table=LAKESHORE, balance=5000)
        assert r.trip(UNION, BLUFFS, when, when + 1200).fare == 610  # zone 1 -> 2 at peak
    r = Rider(impl, table=LAKESHORE, balance=5000)
    early = int(datetime(2026, 3, 6, 11, 30, tzinfo=UTC).timestamp())
    assert r.trip(UNION, BLUFFS, early, early + 1200).fare == 520


def test_public_holiday_is_priced_as_sunday(impl: Any) -> None:
    holiday = Rider(impl, table=LAKESHORE, balance=5000).trip(
        UNION, BLUFFS, toronto(2026, 7, 1, 8), toronto(2026, 7, 1, 8, 20))  # Canada Day, a Wednesday
    workday = Rider(impl, table=LAKESHORE, balance=5000).trip(
        UNION, BLUFFS, toronto(2026, 7, 2, 8), toronto(2026, 7, 2, 8, 20))
    assert (holiday.fare, workday.fare) == (520, 610)


def test_boundary_station_is_priced_at_the_cheaper_zone(impl: Any) -> None:
    def fare(origin: int, dest: int) -> int:
        r = Rider(impl, table=LAKESHORE, balance=5000)
        return int(r.trip(origin, dest, toronto(2026, 6, 13, 12), toronto(2026, 6, 13, 12, 30)).fare)

    # Harbour is in zones 1 and 2: as zone 1 from Union, as zone 2 towards Pickering
    assert (fare(UNION, HARBOUR), fare(HARBOUR, PICKERING), fare(UNION, PICKERING)) == (380, 520, 690)
    # as zone 2 towards Bluffs; back out at Harbour after the same-station window: its own zone's fare
    assert (fare(HARBOUR, BLUFFS), fare(HARBOUR, HARBOUR)) == (380, 380)


def test_student_discount_holds_on_the_networks_it_names(impl: Any) -> None:
    saturday = toronto(2026, 6, 13, 12)
    rail = Rider(impl, table=LAKESHORE, category=STUDENT, balance=5000).trip(
        UNION, BLUFFS, saturday, saturday + 1200)
    streetcar = Rider(impl, table=LAKESHORE, category=STUDENT, balance=5000).trip(
        KING_BAY, SPADINA, saturday, saturday + 1200)
    bus = Rider(impl, table=LAKESHORE, category=STUDENT, balance=5000).tap(L_BUS, ENTRY, saturday)
    assert (rail.fare, streetcar.fare, bus.fare) == (520, 168, 168)


def test_same_station_rule_prices_what_the_od_table_leaves_out(impl: Any) -> None:
    assert LAKESHORE.fares[LAKESHORE.n_stations * LAKESHORE.station_ids.index(KING_BAY) * 1
                           + LAKESHORE.station_ids.index(KING_BAY)] == 0
    r = Rider(impl, table=LAKESHORE, balance=5000)
    late = r.trip(KING_BAY, KING_BAY, toronto(2026, 6, 13, 12), toronto(2026, 6, 13, 12, 45))
    assert (late.allowed, late.fare, late.flags & Flag.SAME_STATION) == (True, 0, 0)
    data = example("lakeshore")
    data["paid_area"] = {**data["paid_area"], "same_station_window_min": 0}
    with pytest.raises(RulesError, match=r"network 'streetcar' has no fare .* for 11->11"):
        rules_from_data(data)


# --- the overdraft ---

def test_overdraft_lets_one_exit_go_below_zero_and_the_top_up_recovers_it(impl: Any) -> None:
    r = Rider(impl, table=LAKESHORE, balance=200)
    out = r.trip(UNION, BLUFFS, toronto(2026, 6, 13, 12), toronto(2026, 6, 13, 12, 30))
    assert (out.allowed, out.reason, out.fare, out.balance_after) == (True, Reason.OK, 520, -320)
    assert out.flags & Flag.OVERDRAFT and r.record.balance == -320
    assert out.display_en == "Fare ¥5.20  Overdrawn ¥3.20 - please top up"  # the gate's display
    assert out.display_zh == "扣费 5.20 元 透支 3.20 元 请充值"
    # a negative balance enters nowhere and boards nothing...
    refused = r.tap(UNION, ENTRY, toronto(2026, 6, 13, 13))
    assert (refused.allowed, refused.reason) == (False, Reason.INSUFFICIENT_BALANCE)
    assert r.tap(L_BUS, ENTRY, toronto(2026, 6, 13, 13)).reason == Reason.INSUFFICIENT_BALANCE
    # ...until the next top-up, applied in full, recovers the debt
    topped = r.tap(UNION, ENTRY, toronto(2026, 6, 13, 14), topup=2000, action_id=1)
    assert (topped.allowed, topped.topup, topped.balance_after) == (True, 2000, 1680)


def test_overdraft_refused_beyond_its_limit_from_zero_and_on_other_taps(impl: Any) -> None:
    far = Rider(impl, table=LAKESHORE, balance=300)  # 690 - 300 = 390 below zero > 350
    out = far.trip(UNION, PICKERING, toronto(2026, 6, 13, 12), toronto(2026, 6, 13, 12, 30))
    assert (out.allowed, out.reason) == (False, Reason.INSUFFICIENT_BALANCE)
    empty = Rider(impl, table=LAKESHORE, balance=0)  # only from a balance above zero
    assert empty.tap(L_BUS, ENTRY, toronto(2026, 6, 13, 12)).reason == Reason.INSUFFICIENT_BALANCE
    exits_only = compiled("lakeshore", overdraft={"limit_fen": 350, "taps": ["exit"]})
    bus = Rider(impl, table=exits_only, balance=100).tap(L_BUS, ENTRY, toronto(2026, 6, 13, 12))
    assert bus.reason == Reason.INSUFFICIENT_BALANCE
    bus_ok = Rider(impl, table=LAKESHORE, balance=100).tap(L_BUS, ENTRY, toronto(2026, 6, 13, 12))
    assert (bus_ok.allowed, bus_ok.balance_after, bool(bus_ok.flags & Flag.OVERDRAFT)) == (True, -235, True)


def test_both_cores_agree_on_the_example_sequences() -> None:
    impls = fare_core.implementations()
    if len(impls) < 2:
        if os.environ.get("CI") == "true":
            pytest.fail("the compiled core is not built and CI=true")
        pytest.skip("the compiled core is not built")
    runs = []
    for core, denylist in impls.values():
        impl = type("Impl", (), {"core": core, "denylist": denylist})
        r = Rider(impl, table=BEIJING, balance=100_000)
        runs.append([r.trip(PINGGUOYUAN, XIDAN, beijing(2026, 11, 1 + k // 5, 7 + 2 * (k % 5)),
                            beijing(2026, 11, 1 + k // 5, 7 + 2 * (k % 5), 40)).as_dict() for k in range(60)])
    assert runs[0] == runs[1]


# --- what the rules refuse ---

@pytest.mark.parametrize(("changes", "message"), [
    ({"rider_categories": {"adult": {"monthly": {"tiers": [{"from_fen": 200, "percent_off": 5},
                                                           {"from_fen": 100, "percent_off": 9}]}}}},
     r"rider_categories.adult.monthly.tiers\[1\].from_fen: 100 must be above the previous tier's 200"),
    ({"rider_categories": {"adult": {"monthly": {"tiers": [{"from_rides": 3, "percent_off": 5}]}}}},
     r"a 'spend' scheme counts with from_fen, not from_rides"),
    ({"rider_categories": {"adult": {"monthly": {"basis": "rides", "counted_networks": ["tram"],
                                                 "tiers": [{"from_rides": 3, "percent_off": 5}]}}}},
     r"monthly.counted_networks\[0\]: unknown network 'tram'"),
    ({"rider_categories": {"adult": {"daily_cap_fen": 70000}}}, r"daily_cap_fen: must be <= 65535"),
    ({"rider_categories": {"adult": {"discount_networks": ["ferry"]}}},
     r"discount_networks\[0\]: unknown network 'ferry'"),
    ({"time_zone": "Mars/Olympus"}, r"time_zone: unknown time zone 'Mars/Olympus'"),
    ({"utc_offset_min": -300}, r"utc_offset_min: give time_zone or utc_offset_min, not both"),
    ({"calendars": [{"dates": ["2026-07-01"], "price_as": "sun"},
                    {"dates": ["2026-07-01"], "price_as": "sat"}]},
     r"calendars\[1\].dates\[0\]: 2026-07-01 is also in calendars\[0\]"),
    ({"calendars": [{"dates": ["2026-02-30"], "price_as": "sun"}]},
     r"'2026-02-30' is not a date of the calendar"),
    ({"valid_until": "2025-01-01"}, r"valid_until: 2025-01-01 must come after valid_from 2026-01-01"),
])
def test_rules_refuse_what_cannot_be_priced(changes: dict[str, Any], message: str) -> None:
    data = example("lakeshore")
    for key, value in changes.items():
        if key == "rider_categories":
            data[key] = {**data[key], "adult": {**data[key]["adult"], **value["adult"]}}
        else:
            data[key] = value
    with pytest.raises(RulesError, match=message):
        rules_from_data(data)


def test_a_station_in_zone_and_zones_is_refused() -> None:
    data = example("lakeshore")
    data["stations"] = [{**data["stations"][1], "zone": "1"}, *data["stations"][:1], *data["stations"][2:]]
    with pytest.raises(RulesError, match=r"stations\[0\].zones: give zone or zones, not both"):
        rules_from_data(data)


def test_yuan_typed_as_fen_in_the_new_rules_is_warned_about() -> None:
    from fare_core.rules_advice import check_data

    data = example("beijing")
    data["rider_categories"]["adult"]["monthly"]["tiers"][0] = {"from_fen": 90, "percent_off": 20}
    data["rider_categories"]["adult"]["weekly_cap_fen"] = 50
    data["overdraft"] = {"limit_fen": 35}
    outcome = check_data(data)
    assert outcome.rules is not None  # warnings only
    where = sorted(p.location for p in outcome.problems if p.severity == "warning")
    assert where == ["overdraft.limit_fen", "rider_categories.adult.monthly.tiers[0].from_fen",
                     "rider_categories.adult.weekly_cap_fen"]


def test_export_to_gtfs_states_the_zone_and_boundary_and_lists_the_rest(tmp_path: Path) -> None:
    from fare_core.gtfs.exporter import export_gtfs

    rules = rules_from_data(example("lakeshore"))
    lost = "\n".join(export_gtfs(rules, tmp_path))
    agency = (tmp_path / "agency.txt").read_text(encoding="utf-8")
    assert agency.splitlines()[1].endswith(",America/Toronto")
    stop_areas = (tmp_path / "stop_areas.txt").read_text(encoding="utf-8").splitlines()
    assert "1,2" in stop_areas and "2,2" in stop_areas  # Harbour (stop 2) in zones 1 and 2
    for what in ("weekly_cap_fen = 4700 (rolling_7_days)", "overdraft.limit_fen = 350",
                 "calendars[0] (10 dates priced as sun)"):
        assert what in lost, lost


@pytest.mark.security
def test_a_record_relabelled_as_layout_1_is_refused(impl: Any) -> None:
    """Layout 1 is still read, so a forger might relabel a layout-2 record to have its week and ride
    counters read as zero: the MAC covers the layout byte, and the slot is refused."""
    r = Rider(impl, table=BEIJING, balance=5000, month_number=(2026 - 2000) * 12 + 10, month_spent=9_000,
              month_rides=30, week_spent=900)
    forged = bytearray(r.wallet)
    assert forged[0] == 2
    forged[0] = 1
    r.wallet = bytes(forged)
    out = r.tap(PINGGUOYUAN, ENTRY, beijing(2026, 11, 10, 9))
    assert (out.allowed, out.reason, out.record) == (False, Reason.BAD_MAC, None)


@pytest.mark.security
def test_a_table_whose_new_arrays_do_not_hold_is_refused_even_with_a_good_checksum() -> None:
    """Tiers that do not rise, an offset change out of order or a cap the card cannot count: a forged or
    broken artefact re-hashed is still refused by TableData.validate() when it loads."""
    import dataclasses
    from array import array

    from fare_core.artefact import pack, unpack
    from fare_core.errors import FareTableError

    blob = pack(LAKESHORE)
    assert unpack(blob) == LAKESHORE
    for bad, why in (
        ({"monthly_tier_first": array("I", [0, 2, 2]), "monthly_tier_from": array("I", [500, 100]),
          "monthly_tier_percent": bytes([10, 20])}, "tiers do not rise"),
        ({"offset_change_at": array("I", [20, 10]), "offset_change_min": array("i", [60, 0])}, "do not rise"),
        ({"weekly_cap": array("I", [70_000, 0])}, "at most 65535"),
        ({"date_override_as": bytes([7] * len(LAKESHORE.date_override_day))}, "weekday 0..6"),
    ):
        broken = dataclasses.replace(LAKESHORE, **bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=why):
            broken.validate()
        with pytest.raises(FareTableError):
            pack(broken)
    # the same written into the bytes: the adult's weekly cap set to 70000, the SHA-256 made good again
    import hashlib
    import struct

    labels = struct.unpack_from("<I", blob, 60)[0]
    k, h, c = len(LAKESHORE.offset_change_at), len(LAKESHORE.date_override_day), LAKESHORE.n_categories
    weekly = len(blob) - 32 - labels - 5 * h - 8 * k - 4 * c
    assert struct.unpack_from("<I", blob, weekly) == (4700,)
    body = bytearray(blob[:-32])
    struct.pack_into("<I", body, weekly, 70_000)
    with pytest.raises(FareTableError, match="inconsistent: daily_cap and weekly_cap are at most 65535"):
        unpack(bytes(body) + hashlib.sha256(body).digest())
