"""The compiler: hand-worked fares for every rule kind, read back out of the compiled TableData."""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import fare_core
from fare_core.compiler import band_at, compile_rules, fare_index, minute_of_week, track_distances
from fare_core.rules import DistanceLegRule, FareRules, RulesError, load_rules, parse_rules
from fare_core.table_data import (
    DENYLISTED_EXIT_LET_OUT,
    DENYLISTED_EXIT_REFUSE,
    MINUTES_PER_WEEK,
    MONTH_COUNTS,
    MONTH_DISCOUNTED,
    TableData,
)

EXAMPLES = Path(fare_core.__file__).parent / "examples"
ADULT, STUDENT, SENIOR, STAFF = range(4)
OFFPEAK, PEAK = range(2)
CST = timezone(timedelta(hours=8))


def tiny_data() -> dict[str, Any]:
    with (EXAMPLES / "tiny.toml").open("rb") as file:
        return tomllib.load(file)


def compile_data(data: dict[str, Any], version: int = 1) -> TableData:
    return compile_rules(parse_rules(json.dumps(data), "json"), version, created_at=0)


@pytest.fixture(scope="module")
def tiny() -> TableData:
    return compile_rules(load_rules(EXAMPLES / "tiny.toml"), 7, created_at=1_700_000_000)


@pytest.fixture(scope="module")
def guangzhou_rules() -> FareRules:
    return load_rules(EXAMPLES / "guangzhou.toml")


@pytest.fixture(scope="module")
def guangzhou(guangzhou_rules: FareRules) -> TableData:
    return compile_rules(guangzhou_rules, 1, created_at=0)


def fare(table: TableData, origin: int, dest: int, category: int = ADULT, band: int = OFFPEAK) -> int:
    ids = list(table.station_ids)
    return table.fares[fare_index(table, band, category, ids.index(origin), ids.index(dest))]


def two_station_line(distance_m: int) -> dict[str, Any]:
    """Guangzhou's distance rule on a line of two stations `distance_m` apart."""
    with (EXAMPLES / "guangzhou.toml").open("rb") as file:
        gz = tomllib.load(file)
    edge = {"from": 1, "to": 2, "distance_m": distance_m}
    return {
        "name": "line",
        "stations": [{"id": 1, "name": "A", "network": "metro"}, {"id": 2, "name": "B", "network": "metro"}],
        "networks": {"metro": {"fare_collection": "entry_exit", "edges": [edge]}},
        "rider_categories": {"adult": {}}, "leg_rules": [gz["leg_rules"][0]],
    }


# Guangzhou Metro: ¥2 to 4 km; +¥1 per 4 km (or part) to 12 km; +¥1 per 6 km to 24 km; +¥1 per 8 km beyond.
@pytest.mark.parametrize(("distance_m", "fen"), [
    (1, 200), (4000, 200), (4001, 300), (8000, 300), (8001, 400), (12000, 400), (12001, 500),
    (18000, 500), (18001, 600), (24000, 600), (24001, 700), (32000, 700), (32001, 800), (40000, 800),
    (40001, 900),
])
def test_guangzhou_distance_bands_compiled(distance_m: int, fen: int) -> None:
    table = compile_data(two_station_line(distance_m))
    assert fare(table, 1, 2) == fen and fare(table, 2, 1) == fen
    assert fare(table, 1, 1) == 200  # exit where you entered, after the same-station window: 0 km


def test_track_distances_take_the_shortest_path() -> None:
    #   1 -5- 2 -5- 3      the direct 1-3 segment (12) is longer than going through 2 (10);
    #    \---- 12 ---/     4 is an island
    dist = track_distances([1, 2, 3, 4], [(1, 2, 5), (2, 3, 5), (1, 3, 12)])
    assert dist[1] == {1: 0, 2: 5, 3: 10}
    assert dist[3][1] == 10
    assert dist[4] == {4: 0}


def _floyd_warshall(rules: FareRules) -> dict[tuple[int, int], int]:
    """An independent all-pairs shortest path, to check the compiler's Dijkstra."""
    ids = [s.id for s in rules.stations if s.network == "metro"]
    inf = 10**12
    d = {(a, b): 0 if a == b else inf for a in ids for b in ids}
    for e in rules.networks["metro"].edges:
        d[e.from_station, e.to_station] = d[e.to_station, e.from_station] = e.distance_m
    for k in ids:
        for a in ids:
            dak = d[a, k]
            for b in ids:
                if dak + d[k, b] < d[a, b]:
                    d[a, b] = dak + d[k, b]
    return d


def test_guangzhou_every_metro_fare_matches_the_rule(guangzhou_rules: FareRules,
                                                    guangzhou: TableData) -> None:
    rule = guangzhou_rules.leg_rules[0]
    assert isinstance(rule, DistanceLegRule)
    for (a, b), metres in _floyd_warshall(guangzhou_rules).items():
        for band in (OFFPEAK, PEAK):
            assert fare(guangzhou, a, b, ADULT, band) == rule.fare(metres), (a, b, metres)


def test_guangzhou_hand_worked_trips(guangzhou: TableData) -> None:
    # Xilang (101) -> Guangzhou East (116): Line 1 to Tiyu Xilu is 14,990 m, then Line 3's branch via
    # Linhexi (920 + 1,120) beats Line 1's last two segments (890 + 1,690): 17,030 m -> 500 fen.
    assert fare(guangzhou, 101, 116) == 500
    # Xilang -> Kecun (309) changes lines inside the paid area: Line 1 to Gongyuanqian (10,030), Line 2 to
    # Changgang (3,940), Line 8 to Kecun (4,240) = 18,210 m -> 600 fen; via Tiyu Xilu it would be 19,230 m.
    assert fare(guangzhou, 101, 309) == 600
    assert fare(guangzhou, 309, 101) == 600
    # Gongyuanqian -> Haizhu Square: 1,030 m -> 200; student half, senior and staff free.
    assert [fare(guangzhou, 109, 213, c) for c in range(4)] == [200, 100, 0, 0]


def test_tiny_distance_fares_and_od_override(tiny: TableData) -> None:
    # off-peak: 200 to 4 km, +100 per 4 km or part. A-B 1.5 km, A-C 4.5 km, B-D 7 km, C-D 4 km.
    assert fare(tiny, 1, 2) == 200
    assert fare(tiny, 1, 3) == 300
    assert fare(tiny, 2, 4) == 300
    assert fare(tiny, 3, 4) == 200
    # A-D is 8.5 km (500 by distance) but the off-peak OD fare says 400, both ways.
    assert fare(tiny, 1, 4) == 400 and fare(tiny, 4, 1) == 400
    # peak has its own rule (250, +150 per 4 km or part) and no OD override: A-D 250 + 2 * 150.
    assert fare(tiny, 1, 4, band=PEAK) == 550
    assert fare(tiny, 1, 3, band=PEAK) == 400
    assert fare(tiny, 2, 2, band=PEAK) == 250


def test_tiny_categories(tiny: TableData) -> None:
    assert tiny.category_names == ("adult", "student", "senior", "staff")
    # student 50% (rounded half up), senior free, staff 150 fen off (never below 0)
    assert [fare(tiny, 1, 4, c, PEAK) for c in range(4)] == [550, 275, 0, 400]
    assert [fare(tiny, 1, 2, c) for c in range(4)] == [200, 100, 0, 50]


def test_percent_discount_rounds_half_up() -> None:
    data = tiny_data()
    data["rider_categories"]["student"]["percent_off"] = 33
    table = compile_data(data)
    assert fare(table, 1, 4, STUDENT, PEAK) == 369  # 550 * 0.67 = 368.5 -> 369
    assert fare(table, 1, 3, STUDENT) == 201  # 300 * 0.67 = 201


def test_zone_matrix() -> None:
    data = tiny_data()
    for station, zone in zip(data["stations"][:4], "AABB", strict=True):
        station["zone"] = zone
    data["leg_rules"][0] = {"kind": "zones", "network": "metro", "zones": ["A", "B"],
                            "matrix": [[210, 320], [330, 220]]}
    table = compile_data(data)
    assert fare(table, 1, 2) == 210
    assert fare(table, 2, 3) == 320
    assert fare(table, 3, 1) == 330
    assert fare(table, 4, 3) == 220
    assert fare(table, 1, 4) == 400  # the OD fare still overrides the zone fare
    assert fare(table, 1, 2, band=PEAK) == 250  # peak keeps its distance rule


def test_band_specific_od_overrides_the_general_one() -> None:
    data = tiny_data()
    data["leg_rules"][2]["timeframe"] = None  # A<->D 400 in every band...
    data["leg_rules"].append({"kind": "od", "network": "metro", "timeframe": "peak",
                              "pairs": [{"from": 1, "to": 4, "fare_fen": 450, "both_ways": False}]})
    table = compile_data(data)  # ...but 450 from A to D at peak
    assert fare(table, 1, 4) == 400
    assert fare(table, 1, 4, band=PEAK) == 450
    assert fare(table, 4, 1, band=PEAK) == 400


def test_flat_fares(tiny: TableData) -> None:
    metro, bus = tiny.network_names.index("metro"), tiny.network_names.index("bus")
    assert tiny.network_flat[bus] == 1 and tiny.network_flat[metro] == 0
    for band in (OFFPEAK, PEAK):
        got = [tiny.flat_fares[(band * tiny.n_categories + c) * tiny.n_networks + bus] for c in range(4)]
        assert got == [200, 100, 0, 50]
        assert all(tiny.flat_fares[(band * tiny.n_categories + c) * tiny.n_networks + metro] == 0
                   for c in range(4))
    # a bus "row" of the matrix repeats the flat fare; metro -> bus cells hold the missing-exit fare
    assert [fare(tiny, 50, s, STUDENT) for s in (1, 2, 50)] == [100, 100, 100]
    assert fare(tiny, 1, 50) == tiny.missing_exit_fare[tiny.station_ids.index(1)]


def test_peak_flat_fare() -> None:
    data = tiny_data()
    data["leg_rules"].append({"kind": "flat", "network": "bus", "timeframe": "peak", "fare_fen": 300})
    table = compile_data(data)
    bus = table.network_names.index("bus")
    assert table.flat_fares[bus] == 200  # band 0 (off-peak), adult
    assert table.flat_fares[(PEAK * table.n_categories + STUDENT) * table.n_networks + bus] == 150


def test_category_rules_are_taken_as_written() -> None:
    data = tiny_data()
    data["leg_rules"] += [
        # students: their own bus fare, an OD fare A<->B, and their own peak distance rule
        {"kind": "flat", "network": "bus", "rider_category": "student", "fare_fen": 80},
        {"kind": "od", "network": "metro", "rider_category": "student",
         "pairs": [{"from": 1, "to": 2, "fare_fen": 90}]},
        {"kind": "distance", "network": "metro", "rider_category": "student", "timeframe": "peak",
         "base_fen": 110, "base_up_to_m": 4000, "steps": [{"every_m": 1000, "add_fen": 10}]},
    ]
    table = compile_data(data)
    bus = table.network_names.index("bus")
    for band in (OFFPEAK, PEAK):
        flat = [table.flat_fares[(band * table.n_categories + c) * table.n_networks + bus] for c in range(4)]
        assert flat == [200, 80, 0, 50]  # the student fare is not halved again; others keep their discount
        assert fare(table, 1, 2, STUDENT, band) == 90 and fare(table, 2, 1, STUDENT, band) == 90
    assert fare(table, 2, 3, STUDENT) == 100  # no student rule off-peak: half of 200
    assert fare(table, 1, 4, STUDENT) == 200  # half of the adult OD fare 400
    assert fare(table, 1, 4, STUDENT, PEAK) == 110 + 5 * 10  # own rule: 8.5 km is 4.5 km over 4 km
    assert fare(table, 1, 4, ADULT, PEAK) == 550
    n = table.n_stations
    assert table.missing_exit_fare[STUDENT * n + 0] == 200  # A's dearest student trip: A-D off-peak


def _local_minute(day: int, hour: int, minute: int) -> int:
    return day * 1440 + hour * 60 + minute


def test_time_bands_by_local_minute(tiny: TableData) -> None:
    assert tiny.band_names == ("offpeak", "peak")
    assert len(tiny.band_of_minute) == MINUTES_PER_WEEK
    for day in range(5):  # Monday..Friday 07:30-09:00
        assert tiny.band_of_minute[_local_minute(day, 7, 29)] == OFFPEAK
        assert tiny.band_of_minute[_local_minute(day, 7, 30)] == PEAK
        assert tiny.band_of_minute[_local_minute(day, 8, 59)] == PEAK
        assert tiny.band_of_minute[_local_minute(day, 9, 0)] == OFFPEAK
    for day in (5, 6):
        assert tiny.band_of_minute[_local_minute(day, 8, 0)] == OFFPEAK
    assert sum(tiny.band_of_minute) == 5 * 90


def test_time_bands_through_the_utc_offset(tiny: TableData) -> None:
    # Monday 2026-11-23 07:30 in Guangzhou (UTC+8) is Sunday 23:30 UTC.
    peak_start = datetime(2026, 11, 23, 7, 30, tzinfo=CST)
    assert peak_start.astimezone(UTC).weekday() == 6
    utc = int(peak_start.timestamp())
    assert minute_of_week(utc, 480) == _local_minute(0, 7, 30)
    assert band_at(tiny, utc) == PEAK
    assert band_at(tiny, utc - 1) == OFFPEAK  # 07:29:59
    assert band_at(tiny, utc + 90 * 60 - 1) == PEAK  # 08:59:59
    assert band_at(tiny, utc + 90 * 60) == OFFPEAK  # 09:00:00
    # Read as UTC+0 the same instant is Sunday night: off-peak.
    assert minute_of_week(utc, 0) == _local_minute(6, 23, 30)


def test_negative_utc_offset_and_timeframe_past_midnight() -> None:
    data = tiny_data()
    data["utc_offset_min"] = -300  # UTC-5
    data["timeframes"].append({"group": "night", "days": ["sun"], "start": "23:00", "end": "01:00"})
    data["leg_rules"].append({"kind": "flat", "network": "bus", "timeframe": "night", "fare_fen": 400})
    table = compile_data(data)
    night = table.band_names.index("night")
    assert table.band_of_minute[_local_minute(6, 22, 59)] == OFFPEAK
    assert table.band_of_minute[_local_minute(6, 23, 0)] == night
    assert table.band_of_minute[0] == night  # Monday 00:00: the Sunday row wraps into the week's start
    assert table.band_of_minute[59] == night
    assert table.band_of_minute[60] == OFFPEAK
    monday_0030_local = int(datetime(2026, 11, 23, 0, 30, tzinfo=timezone(timedelta(hours=-5))).timestamp())
    assert band_at(table, monday_0030_local) == night
    assert table.utc_offset_min == -300


def test_full_week_timeframes_without_default() -> None:
    data = tiny_data()
    data["default_timeframe"] = None
    data["timeframes"] = [
        {"group": "day", "start": "06:00", "end": "22:00"},
        {"group": "night", "start": "22:00", "end": "06:00"},
    ]
    for rule in data["leg_rules"]:
        rule.pop("timeframe", None)
    night_od = {"kind": "od", "network": "metro", "timeframe": "night",
                "pairs": [{"from": 1, "to": 2, "fare_fen": 150}]}
    data["leg_rules"] = [r for r in data["leg_rules"] if r["kind"] != "od"] + [night_od]
    data["leg_rules"].pop(1)  # the peak distance rule duplicated the general one now
    table = compile_data(data)
    assert table.band_names == ("day", "night")
    assert table.band_of_minute[_local_minute(2, 5, 59)] == 1
    assert table.band_of_minute[_local_minute(2, 6, 0)] == 0
    assert fare(table, 1, 2, band=1) == 150 and fare(table, 1, 2, band=0) == 200


def test_transfers(tiny: TableData) -> None:
    n = tiny.n_networks
    metro, bus = tiny.network_names.index("metro"), tiny.network_names.index("bus")
    assert tiny.transfer_window_s[metro * n + bus] == 90 * 60
    assert tiny.transfer_discount[metro * n + bus] == 100
    assert tiny.transfer_percent[metro * n + bus] == 0
    assert tiny.transfer_window_s[bus * n + metro] == 90 * 60
    assert tiny.transfer_percent[bus * n + metro] == 50
    assert tiny.transfer_discount[bus * n + metro] == 0
    assert tiny.transfer_window_s[metro * n + metro] == 0 and tiny.transfer_window_s[bus * n + bus] == 0
    assert tiny.max_transfers == 1


def test_caps_monthly_and_paid_area(tiny: TableData) -> None:
    assert list(tiny.daily_cap) == [1000, 500, 0, 0]
    # the adult's one spend threshold is one tier, counted and discounted on every network
    assert list(tiny.monthly_tier_first) == [0, 1, 1, 1, 1]
    assert list(tiny.monthly_tier_from) == [10000] and list(tiny.monthly_tier_percent) == [20]
    assert set(tiny.monthly_networks) == {MONTH_COUNTS | MONTH_DISCOUNTED} and tiny.monthly_flags == bytes(4)
    assert list(tiny.weekly_cap) == [0, 0, 0, 0] and tiny.overdraft_limit == 0 and tiny.overdraft_taps == 0
    assert tiny.month_start_min == 0 and not tiny.offset_change_at and not tiny.date_override_day
    assert tiny.max_inside_s == 4 * 3600 and tiny.overstay_surcharge == 500
    assert tiny.same_station_window_s == 300 and list(tiny.same_station_fare) == [0, 0, 0, 0]
    assert tiny.anti_passback_s == 600
    assert list(tiny.min_entry_balance) == [200, 200, 0, 200] and tiny.max_balance == 100_000
    assert tiny.utc_offset_min == 480 and tiny.day_start_min == 240
    assert tiny.version == 7 and tiny.created_at == 1_700_000_000 and tiny.name == "tiny"


def test_min_entry_balance_by_default_spares_the_categories_never_charged(tiny: TableData) -> None:
    # tiny.toml names no categories: adult, student and staff pay fares, the senior rides free
    assert list(tiny.min_entry_balance) == [200, 200, 0, 200]
    data = tiny_data()
    data["rider_categories"]["staff"]["fen_off"] = 10_000  # more than any fare: fully discounted
    assert list(compile_data(data).min_entry_balance) == [200, 200, 0, 0]
    # a free category that its own leg rule charges is charged, so the minimum applies to it
    data = tiny_data()
    data["leg_rules"].append({"kind": "flat", "network": "bus", "rider_category": "senior", "fare_fen": 100})
    assert list(compile_data(data).min_entry_balance) == [200, 200, 200, 200]


def test_min_entry_categories_list_where_the_minimum_applies() -> None:
    data = tiny_data()
    data["min_entry_categories"] = ["adult", "senior"]  # listed, the free senior needs it too
    assert list(compile_data(data).min_entry_balance) == [200, 0, 200, 0]
    data["min_entry_categories"] = []
    assert list(compile_data(data).min_entry_balance) == [0, 0, 0, 0]
    data = tiny_data()
    data["min_entry_balance_fen"] = 0
    assert list(compile_data(data).min_entry_balance) == [0, 0, 0, 0]


def test_deny_list_exit_rule() -> None:
    assert compile_data(tiny_data()).denylisted_exit == DENYLISTED_EXIT_LET_OUT  # the default
    data = tiny_data()
    data["deny_list"] = {"exit_with_open_entry": "refuse"}
    assert compile_data(data).denylisted_exit == DENYLISTED_EXIT_REFUSE
    data["deny_list"] = {"exit_with_open_entry": "let_out_charged"}
    assert compile_data(data).denylisted_exit == DENYLISTED_EXIT_LET_OUT


@pytest.mark.parametrize(("toml", "expected"), [
    ('[deny_list]\nexit_with_open_entry = "let out"',
     "deny_list.exit_with_open_entry: must be 'let_out_charged' or 'refuse'"),
    ('[deny_list]\nexit_with_open_entry = 1',
     "deny_list.exit_with_open_entry: must be 'let_out_charged' or 'refuse'"),
    ('[deny_list]\nexits = "refuse"', "deny_list.exits: unknown field"),
    ('min_entry_categories = ["adult", "pensioner"]',
     "min_entry_categories[1]: unknown rider category 'pensioner' (known: adult, student, senior, staff)"),
    ('min_entry_categories = "adult"', "min_entry_categories: must be a list"),
    ('min_entry_categories = ["adult", 2]', "min_entry_categories[1]: must be a string"),
])
def test_malformed_rule_values_are_refused_naming_the_path(toml: str, expected: str) -> None:
    text = (EXAMPLES / "tiny.toml").read_text(encoding="utf-8")
    if toml.startswith("["):  # a table goes at the end of the file...
        text += f"\n{toml}\n"
    else:  # ...a key among the top-level keys, before the first table
        text = text.replace("\nstations = [", f"\n{toml}\nstations = [", 1)
    with pytest.raises(RulesError) as info:
        compile_rules(parse_rules(text, "toml"), 1)
    assert expected in str(info.value), str(info.value)


def test_same_station_fare_per_category() -> None:
    data = tiny_data()
    data["paid_area"]["same_station_fare_fen"] = 200
    assert list(compile_data(data).same_station_fare) == [200, 100, 0, 50]


def test_missing_exit_is_the_highest_fare_from_the_origin(tiny: TableData) -> None:
    ids = list(tiny.station_ids)
    n = tiny.n_stations
    for c in range(4):
        for origin in (1, 2, 3, 4):
            highest = max(fare(tiny, origin, d, c, b) for d in (1, 2, 3, 4) for b in (OFFPEAK, PEAK))
            assert tiny.missing_exit_fare[c * n + ids.index(origin)] == highest
        assert tiny.missing_exit_fare[c * n + ids.index(50)] == 0  # a bus leg leaves nothing open
    # by hand, adult: A's dearest trip is A-D at peak (550); B's is B-D at peak (250 + 150 = 400)
    assert [tiny.missing_exit_fare[ids.index(s)] for s in (1, 2, 3, 4)] == [550, 400, 400, 550]


def test_fixed_missing_exit_fare() -> None:
    data = tiny_data()
    data["paid_area"]["missing_exit_fare_fen"] = 900
    table = compile_data(data)
    n = table.n_stations
    assert [table.missing_exit_fare[c * n] for c in range(4)] == [900, 450, 0, 750]


def test_compiled_table_is_consistent_and_deterministic(tiny: TableData) -> None:
    tiny.validate()
    again = compile_rules(load_rules(EXAMPLES / "tiny.toml"), 7, created_at=1_700_000_000)
    assert again == tiny
    assert list(tiny.station_ids) == [1, 2, 3, 4, 50]
    assert json.loads(tiny.extra["station_names"])["1"] == "Alpha"
    assert len(tiny.extra["rules_sha256"]) == 64


def test_rules_digest_ignores_formatting_but_not_content(tmp_path: Path, tiny: TableData) -> None:
    as_json = tmp_path / "tiny.json"
    as_json.write_text(json.dumps(tiny_data(), indent=2), encoding="utf-8")
    assert compile_rules(load_rules(as_json), 7, 0).extra["rules_sha256"] == tiny.extra["rules_sha256"]
    data = tiny_data()
    data["max_balance_fen"] += 1
    assert compile_data(data).extra["rules_sha256"] != tiny.extra["rules_sha256"]


def test_created_at_defaults_to_now() -> None:
    before = int(datetime.now(UTC).timestamp())
    table = compile_rules(load_rules(EXAMPLES / "tiny.toml"), 1)
    assert before <= table.created_at <= before + 60


def test_fare_beyond_32_bits_is_refused() -> None:
    data = tiny_data()
    data["leg_rules"][0]["steps"] = [{"every_m": 1, "add_fen": 0xFFFFFFFF}]
    with pytest.raises(ValueError, match="does not fit 32 bits"):
        compile_data(data)


@pytest.mark.parametrize("version", [-1, 2**32])
def test_version_out_of_range(version: int) -> None:
    with pytest.raises(ValueError, match="version"):
        compile_rules(load_rules(EXAMPLES / "tiny.toml"), version)


def test_guangzhou_table_dimensions(guangzhou: TableData) -> None:
    guangzhou.validate()
    assert guangzhou.n_categories == 4 and guangzhou.n_bands == 2 and guangzhou.n_networks == 2
    assert guangzhou.n_stations == 79
    assert min(guangzhou.fares[:guangzhou.n_stations]) >= 200  # adult fares from the first station


def test_compiled_artefact_drives_decide(impl: Any) -> None:
    """End to end: rules -> compiler -> artefact -> FareTable -> decide(), on each core implementation."""
    from fare_core import Direction
    from fare_core.artefact import pack
    from fare_core.record import CardRecord

    core = impl.core
    table = core.FareTable.from_bytes(pack(compile_rules(load_rules(EXAMPLES / "tiny.toml"), 1, 0)))
    sam = core.Sam(bytes(range(16)))
    denylist = impl.denylist.DenyList((), version=1)

    def ride(category: int, taps: list[tuple[int, int, datetime]]) -> list[int]:
        card = 0x1234 + category
        wallet = core.new_wallet(CardRecord(card_id=card, category=category, balance=5000), sam)
        fares = []
        for station, direction, moment in taps:
            decision = core.decide(wallet, core.Tap(card, station, direction, int(moment.timestamp())),
                                   table, denylist, sam)
            assert decision.allowed, decision
            wallet = core.apply_write(wallet, decision.slot, decision.record)
            fares.append(decision.fare)
        return fares

    def tue(hour: int, minute: int = 0) -> datetime:
        return datetime(2026, 11, 24, hour, minute, tzinfo=CST)

    entry, exit_ = Direction.ENTRY, Direction.EXIT
    assert ride(ADULT, [(1, entry, tue(10)), (4, exit_, tue(10, 30))]) == [0, 400]  # the OD fare
    assert ride(ADULT, [(1, entry, tue(8)), (4, exit_, tue(8, 30))]) == [0, 550]  # peak distance fare
    assert ride(STUDENT, [(1, entry, tue(10)), (3, exit_, tue(10, 30))]) == [0, 150]
    # metro then bus within 90 minutes: the bus's 200 less the 100 fen transfer discount
    assert ride(ADULT, [(1, entry, tue(10)), (2, exit_, tue(10, 20)), (50, entry, tue(11))]) == [0, 200, 100]
