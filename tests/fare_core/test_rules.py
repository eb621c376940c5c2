"""Fare rules: the shipped examples load, and every kind of bad rule is refused with its location named."""

from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import fare_core
from fare_core.rules import DistanceLegRule, FareRules, RiderCategory, RulesError, load_rules, parse_rules

EXAMPLES = Path(fare_core.__file__).parent / "examples"


def tiny_data() -> dict[str, Any]:
    with (EXAMPLES / "tiny.toml").open("rb") as file:
        return tomllib.load(file)


def parse(data: dict[str, Any]) -> FareRules:
    return parse_rules(json.dumps(data), "json")


def test_examples_load() -> None:
    tiny = load_rules(EXAMPLES / "tiny.toml")
    assert [s.id for s in tiny.stations] == [1, 2, 3, 4, 50]
    assert tiny.band_names == ["offpeak", "peak"]
    assert list(tiny.rider_categories) == ["adult", "student", "senior", "staff"]
    gz = load_rules(EXAMPLES / "guangzhou.toml")
    assert len({line for s in gz.stations for line in s.lines}) >= 3
    interchanges = [s.id for s in gz.stations if len(s.lines) > 1]
    assert 114 in interchanges and 109 in interchanges
    assert gz.rider_categories["senior"].free and gz.rider_categories["student"].percent_off == 50


def test_json_and_toml_give_the_same_rules(tmp_path: Path) -> None:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_data()), encoding="utf-8")
    assert load_rules(path) == load_rules(EXAMPLES / "tiny.toml")


def test_defaults() -> None:
    data = tiny_data()
    for key in ("utc_offset_min", "service_day_start", "max_balance_fen", "min_entry_balance_fen"):
        del data[key]
    data["paid_area"] = {}
    rules = parse(data)
    assert rules.utc_offset_min == 480
    assert rules.day_start_min == 4 * 60
    assert rules.paid_area.missing_exit_fare_fen is None  # the max fare from the entry station
    assert rules.min_entry_balance_fen == 0
    assert rules.min_entry_categories is None  # every category the table charges
    assert rules.deny_list.exit_with_open_entry == "let_out_charged"


@pytest.mark.parametrize(("distance_m", "fen"), [
    (0, 200), (4000, 200), (4001, 300), (8000, 300), (8001, 400), (12000, 400), (12001, 500),
    (18000, 500), (18001, 600), (24000, 600), (24001, 700), (32000, 700), (32001, 800), (40001, 900),
])
def test_guangzhou_distance_rule(distance_m: int, fen: int) -> None:
    rule = load_rules(EXAMPLES / "guangzhou.toml").leg_rules[0]
    assert isinstance(rule, DistanceLegRule)
    assert rule.fare(distance_m) == fen


def test_distance_rule_max_fen_caps_the_fare() -> None:
    rule = DistanceLegRule(kind="distance", network="m", base_fen=200, base_up_to_m=4000,
                           steps=[{"up_to_m": 8000, "every_m": 1000, "add_fen": 100}], max_fen=500)
    assert [rule.fare(d) for d in (4000, 5000, 7000, 8000, 100_000)] == [200, 300, 500, 500, 500]


@pytest.mark.parametrize(("category", "fare", "expected"), [
    ({}, 250, 250),
    ({"percent_off": 50}, 250, 125),
    ({"percent_off": 33}, 250, 168),  # 167.5 rounds half up
    ({"percent_off": 33}, 200, 134),
    ({"percent_off": 100}, 250, 0),
    ({"fen_off": 150}, 250, 100),
    ({"fen_off": 300}, 250, 0),  # never below zero
    ({"free": True}, 250, 0),
])
def test_category_discounts(category: dict[str, Any], fare: int, expected: int) -> None:
    assert RiderCategory.model_validate(category).discounted(fare) == expected


# --- one test per validation path: (mutation of tiny.toml, text the error must contain) ---

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node: Any = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return mutate


def _delete(path: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node: Any = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[int(last) if isinstance(node, list) else last]
    return mutate


def _append(path: str, value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        node: Any = data
        for key in path.split("/"):
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, [])
        node.append(copy.deepcopy(value))
    return mutate


def _all(*mutations: Mutation) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        for m in mutations:
            m(data)
    return mutate


STATION = {"id": 5, "name": "Echo", "network": "metro", "lines": ["1"]}
TWO_FLOORS = [{"up_to_m": 8000, "every_m": 4000, "add_fen": 100},
              {"up_to_m": 8000, "every_m": 4000, "add_fen": 100}, {"every_m": 1000, "add_fen": 1}]

BAD_RULES: dict[str, tuple[Mutation, str]] = {
    "zero distance": (_set("networks/metro/edges/2/distance_m", 0),
                      "networks.metro.edges[2].distance_m: must be > 0"),
    "float distance": (_set("networks/metro/edges/2/distance_m", 4000.0),
                       "networks.metro.edges[2].distance_m: must be an integer"),
    "string money": (_set("leg_rules/3/fare_fen", "200"), "leg_rules[3].fare_fen: must be an integer"),
    "negative money": (_set("leg_rules/0/base_fen", -1), "leg_rules[0].base_fen: must be >= 0"),
    "negative step": (_set("leg_rules/0/steps/0/add_fen", -100),
        "leg_rules[0].steps[0].add_fen: must be >= 0"),
    "negative transfer discount": (_set("transfer_rules/0/discount_fen", -5),
                                   "transfer_rules[0].discount_fen: must be >= 0"),
    "negative surcharge": (_set("paid_area/overstay_surcharge_fen", -1),
                           "paid_area.overstay_surcharge_fen: must be >= 0"),
    "percent over 100": (_set("rider_categories/student/percent_off", 101),
                         "rider_categories.student.percent_off: must be <= 100"),
    "transfer percent over 100": (_set("transfer_rules/1/discount_percent", 150),
                                  "transfer_rules[1].discount_percent: must be <= 100"),
    "monthly percent over 100": (_set("rider_categories/adult/monthly_percent_off", 101),
                                 "rider_categories.adult.monthly_percent_off: must be <= 100"),
    "unknown field": (_set("paid_area/max_inside_minutes", 10),
        "paid_area.max_inside_minutes: unknown field"),
    "missing field": (_delete("networks/metro/fare_collection"), "networks.metro.fare_collection: required"),
    "station id 0": (_set("stations/0/id", 0), "stations[0].id: must be >= 1"),
    "station id too big": (_set("stations/0/id", 70000), "stations[0].id: must be <= 65535"),
    "empty station name": (_set("stations/0/name", ""), "stations[0].name: must not be empty"),
    "no stations": (_set("stations", []), "stations: must have at least 1 entries"),
    "duplicate station": (_set("stations/1/id", 1), "stations[1].id: duplicate station id 1"),
    "station on unknown network": (_set("stations/0/network", "tram"),
        "stations[0].network: unknown network 'tram'"),
    "segment to unknown station": (_set("networks/metro/edges/0/to", 99),
                                   "networks.metro.edges[0].to: unknown station 99"),
    "segment to another network": (_set("networks/metro/edges/0/to", 50),
                                   "networks.metro.edges[0].to: station 50 belongs to network 'bus'"),
    "segment to itself": (_set("networks/metro/edges/0/to", 1),
        "networks.metro.edges[0]: a segment from station 1"),
    "duplicate segment": (_append("networks/metro/edges", {"from": 2, "to": 1, "distance_m": 10}),
                          "networks.metro.edges[3]: duplicate segment"),
    "segment line not served": (_set("networks/metro/edges/0/line", "2"),
                                "networks.metro.edges[0].line: station 1 is not on line '2'"),
    "disconnected network": (_delete("networks/metro/edges/2"),
                             "networks.metro.edges: disconnected: station 4 is unreachable"),
    "unreachable new station": (_append("stations", STATION), "station 5 is unreachable"),
    "network without stations": (_set("networks/tram", {"fare_collection": "flat"}),
        "networks.tram: has no stations"),
    "flat network with segments": (
        _all(_append("stations", {"id": 51, "name": "Bus 51", "network": "bus"}),
             _append("networks/bus/edges", {"from": 50, "to": 51, "distance_m": 100})),
        "networks.bus.edges: a flat-fare network has no priced track segments"),
    "non-increasing band limits": (_set("leg_rules/0/steps", TWO_FLOORS),
        "leg_rules[0].steps[1].up_to_m: 8000 must be greater than the previous limit 8000"),
    "limit below base": (_set("leg_rules/0/steps", [{"up_to_m": 3000, "every_m": 1000, "add_fen": 1},
                                                    {"every_m": 1000, "add_fen": 1}]),
                         "leg_rules[0].steps[0].up_to_m: 3000 must be greater than the previous limit 4000"),
    "open step not last": (_set("leg_rules/0/steps", [{"every_m": 1000, "add_fen": 1},
                                                      {"every_m": 1000, "add_fen": 1}]),
                           "leg_rules[0].steps[0].up_to_m: only the last step may be open-ended"),
    "no open step": (_set("leg_rules/0/steps", [{"up_to_m": 9000, "every_m": 1000, "add_fen": 1}]),
                     "leg_rules[0].steps: distances beyond 9000 m have no fare"),
    "zero increment": (_set("leg_rules/0/steps/0/every_m", 0), "leg_rules[0].steps[0].every_m: must be > 0"),
    "unknown leg kind": (_set("leg_rules/0/kind", "magic"),
        'leg_rules[0]: \'magic\' is not a known kind: kind = "distance", "zones", "flat" or "od"'),
    "missing leg kind": (_delete("leg_rules/0/kind"), "leg_rules[0]: kind is required"),
    "leg rule on unknown network": (_set("leg_rules/0/network", "tram"),
        "leg_rules[0].network: unknown network"),
    "leg rule on unknown timeframe": (_set("leg_rules/1/timeframe", "night"),
        "leg_rules[1].timeframe: unknown timeframe 'night' (known: offpeak, peak)"),
    "leg rule for unknown category": (_set("leg_rules/3/rider_category", "child"),
        "leg_rules[3].rider_category: unknown rider category 'child' (known: adult, student, senior, staff)"),
    "duplicate category leg rule": (
        _all(_set("leg_rules/3/rider_category", "student"),
             _append("leg_rules", {"kind": "flat", "network": "bus", "rider_category": "student",
                                   "fare_fen": 1}),
             _append("leg_rules", {"kind": "flat", "network": "bus", "fare_fen": 2})),
        "leg_rules[4]: duplicates leg_rules[3] (network 'bus', timeframe all, rider category student)"),
    "distance rule on a bus": (_set("leg_rules/0/network", "bus"),
        "leg_rules[0].kind: a 'distance' rule cannot price"),
    "flat rule on the metro": (_set("leg_rules/3/network", "metro"),
        "leg_rules[3].kind: a 'flat' rule cannot price"),
    "duplicate leg rule": (_set("leg_rules/1/timeframe", None), "leg_rules[1]: duplicates leg_rules[0]"),
    "band without a bus fare": (_set("leg_rules/3/timeframe", "peak"),
                                "leg_rules: flat network 'bus' has no fare in timeframe 'offpeak'"),
    "band without a metro fare": (_all(_delete("leg_rules/0"), _set("leg_rules/1/timeframe", None)),
                                  "leg_rules: network 'metro' has no fare in timeframe 'offpeak'"),
    "od pair on unknown station": (_set("leg_rules/2/pairs/0/to", 77),
        "leg_rules[2].pairs[0].to: station 77 is not a station of network 'metro'"),
    "od pair given twice": (_append("leg_rules/2/pairs", {"from": 4, "to": 1, "fare_fen": 1}),
                            "leg_rules[2].pairs[1]: fare 4->1 given twice"),
    "zone missing": (_set("leg_rules/0", {"kind": "zones", "network": "metro", "zones": ["A"],
                                          "matrix": [[200]]}),
                     "stations[0].zone: None is not a zone of leg_rules[0]"),
    "zone matrix shape": (
        _all(*(_set(f"stations/{i}/zone", "A") for i in range(4)),
             _set("leg_rules/0", {"kind": "zones", "network": "metro", "zones": ["A", "B"],
                                  "matrix": [[200, 300]]})),
        "leg_rules[0].matrix: 1 rows for 2 zones"),
    "two discount kinds": (_set("rider_categories/student/free", True),
        "rider_categories.student: give at most one discount kind, not percent_off and free"),
    "monthly percent without threshold": (_set("rider_categories/student/monthly_percent_off", 10),
                                          "rider_categories.student.monthly_threshold_fen: must be > 0"),
    "no categories": (_set("rider_categories", {}), "rider_categories: must have at least 1 entries"),
    "bad time": (_set("timeframes/0/start", "25:00"), "timeframes[0].start: '25:00' is not a time of day"),
    "time as number": (_set("timeframes/0/start", 730), "timeframes[0].start: must be a string"),
    "empty timeframe": (_set("timeframes/0/end", "07:30"), "timeframes[0].end: must differ from start"),
    "unknown day": (_set("timeframes/0/days", ["mon", "funday"]), "timeframes[0].days[1]"),
    "duplicate day": (_set("timeframes/0/days", ["mon", "mon"]), "timeframes[0].days: duplicate day"),
    "overlapping timeframes": (
        _append("timeframes", {"group": "shoulder", "days": ["fri"], "start": "08:59", "end": "10:00"}),
        "timeframes[1]: overlaps timeframes[0] ('peak') at fri 08:59"),
    "timeframe named as the default": (_set("timeframes/0/group", "offpeak"),
                                       "timeframes[0].group: 'offpeak' is the default_timeframe"),
    "gap without default": (_set("default_timeframe", None),
                            "timeframes: mon 00:00 is in no timeframe and default_timeframe is not set"),
    "transfer to unknown network": (_set("transfer_rules/0/to_network", "ferry"),
                                    "transfer_rules[0].to_network: unknown network 'ferry'"),
    "duplicate transfer": (_all(_set("transfer_rules/1/from_network", "metro"),
                                _set("transfer_rules/1/to_network", "bus")),
                           "transfer_rules[1]: duplicates transfer_rules[0]"),
    "zero transfer window": (_set("transfer_rules/0/window_min", 0),
        "transfer_rules[0].window_min: must be > 0"),
    "too many transfers": (_set("max_transfers", 255), "max_transfers: must be <= 254"),
    "purse too big": (_set("max_balance_fen", 2**31), "max_balance_fen: must be <= 2147483647"),
    "utc offset": (_set("utc_offset_min", 1440), "utc_offset_min: must be < 1440"),
    "day start": (_set("service_day_start", "24:00"), "service_day_start: must be before 24:00"),
    "minimum for an unknown category": (
        _set("min_entry_categories", ["adult", "child"]),
        "min_entry_categories[1]: unknown rider category 'child' (known: adult, student, senior, staff)"),
    "minimum category twice": (_set("min_entry_categories", ["adult", "student", "adult"]),
                               "min_entry_categories[2]: 'adult' is listed twice"),
    "minimum categories not a list": (_set("min_entry_categories", "adult"),
                                      "min_entry_categories: must be a list"),
    "deny-list exit rule misspelt": (_set("deny_list", {"exit_with_open_entry": "charge"}),
                                     "deny_list.exit_with_open_entry: must be 'let_out_charged' or 'refuse'"),
    "deny-list unknown field": (_set("deny_list", {"entry": "refuse"}), "deny_list.entry: unknown field"),
}


@pytest.mark.parametrize("case", sorted(BAD_RULES))
def test_bad_rules_are_refused_naming_the_field(case: str) -> None:
    mutate, expected = BAD_RULES[case]
    data = tiny_data()
    mutate(data)
    with pytest.raises(RulesError) as info:
        parse(data)
    assert expected in str(info.value), str(info.value)
    assert all(where or why for where, why in info.value.problems)


def test_mutations_start_from_valid_rules() -> None:
    parse(tiny_data())  # so each failure above is caused by its mutation alone


def test_od_fares_may_connect_what_the_track_does_not() -> None:
    data = tiny_data()
    del data["networks"]["metro"]["edges"][2]  # station 4 is now an island...
    data["leg_rules"].append({"kind": "od", "network": "metro", "pairs": [
        {"from": s, "to": 4, "fare_fen": 900} for s in (1, 2, 3)]})  # ...priced explicitly both ways
    data["leg_rules"][2]["timeframe"] = None
    data["leg_rules"][2]["pairs"][0]["to"] = 3
    assert parse(data).leg_rules[-1].network == "metro"


def test_every_problem_is_reported_at_once() -> None:
    data = tiny_data()
    data["stations"][0]["network"] = "tram"
    data["stations"][2]["id"] = 2
    data["transfer_rules"][0]["to_network"] = "ferry"
    with pytest.raises(RulesError) as info:
        parse(data)
    wheres = [where for where, _ in info.value.problems]
    assert "stations[0].network" in wheres and "stations[2].id" in wheres
    assert "transfer_rules[0].to_network" in wheres
    assert len(str(info.value).splitlines()) == len(info.value.problems)


def test_type_errors_list_every_field() -> None:
    data = tiny_data()
    data["networks"]["metro"]["edges"][0]["distance_m"] = -3
    data["stations"][2]["id"] = "three"
    with pytest.raises(RulesError) as info:
        parse(data)
    assert "networks.metro.edges[0].distance_m: must be > 0" in str(info.value)
    assert "stations[2].id: must be an integer" in str(info.value)


def test_wrong_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="not valid TOML"):
        parse_rules("name = ", "toml")
    with pytest.raises(RulesError, match="not valid JSON"):
        parse_rules("{", "json")
    with pytest.raises(RulesError, match="must be a table/object"):
        parse_rules("[1, 2]", "json")
    with pytest.raises(RulesError, match="unknown rules format"):
        parse_rules("{}", "yaml")  # type: ignore[arg-type]
    with pytest.raises(RulesError, match=r"end in \.toml or \.json"):
        load_rules(tmp_path / "rules.yaml")
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(tmp_path / "absent.toml")
    binary = tmp_path / "bad.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(binary)
