"""Checking fare rules in one pass: every independent mistake at once, each at its line and column, with a
hint; warnings for yuan typed as fen; ranges that overlap or leave a gap named with both ends."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import fare_core
from fare_core.rules import FareRules, RulesError, parse_rules, validate_text
from fare_core.rules_advice import check_data, check_text
from fare_core.rules_problem import MONEY_HINT, TIME_HINT, Problem
from fare_core.rules_source import SourceMap

EXAMPLES = Path(fare_core.__file__).parent / "examples"
TINY = (EXAMPLES / "tiny.toml").read_text(encoding="utf-8")


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def line_of(text: str, fragment: str) -> int:
    """1-based line of the one line holding `fragment`."""
    lines = [n for n, line in enumerate(text.splitlines(), 1) if fragment in line]
    if len(lines) > 1:  # "base_fen = 2" is in "base_fen = 250" too: take the line that is just that
        lines = [n for n, line in enumerate(text.splitlines(), 1) if line.strip() == fragment]
    assert len(lines) == 1, (fragment, lines)
    return lines[0]


def found(text: str, fmt: Literal["toml", "json"] = "toml") -> dict[str, Problem]:
    problems = check_text(text, fmt).problems
    by_location = {p.location: p for p in problems}
    assert len(by_location) == len(problems), problems
    return by_location


# --- one pass ---

SIX_MISTAKES = [
    # (what, old text, new text, location, message fragment, line fragment)
    ("a float fare", "base_fen = 200", "base_fen = 2.5",
     "leg_rules[0].base_fen", "must be an integer", "base_fen = 2.5"),
    ("an unknown station in an edge", "{ from = 2, to = 3, distance_m = 3000",
     "{ from = 2, to = 33, distance_m = 3000",
     "networks.metro.edges[1].to", "unknown station 33", "to = 33"),
    ("an unknown network in a leg rule", 'kind = "flat"\nnetwork = "bus"', 'kind = "flat"\nnetwork = "buss"',
     "leg_rules[3].network", "unknown network 'buss'", 'network = "buss"'),
    ("a timeframe ending where it starts", 'start = "07:30", end = "09:00"', 'start = "07:30", end = "07:30"',
     "timeframes[0].end", "must differ from start", 'end = "07:30"'),
    ("a negative distance", "{ from = 3, to = 4, distance_m = 4000", "{ from = 3, to = 4, distance_m = -4000",
     "networks.metro.edges[2].distance_m", "must be > 0", "distance_m = -4000"),
    ("a duplicate station id", '{ id = 50, name = "Bus 50", network = "bus" },',
     '{ id = 50, name = "Bus 50", network = "bus" },\n  { id = 2, name = "Bravo again", network = "metro" },',
     "stations[5].id", "duplicate station id 2 (also stations[1])", "Bravo again"),
]


def six_mistakes() -> str:
    text = TINY
    for _, old, new, *_ in SIX_MISTAKES:
        text = edit(text, old, new)
    return text


def test_six_independent_mistakes_are_reported_at_once_each_at_its_line() -> None:
    text = six_mistakes()
    problems = found(text)
    assert set(problems) == {location for _, _, _, location, _, _ in SIX_MISTAKES}  # no more, no fewer
    for what, _, _, location, message, fragment in SIX_MISTAKES:
        problem = problems[location]
        assert message in problem.message, what
        assert problem.severity == "error"
        assert problem.line == line_of(text, fragment), what
        assert problem.column is not None and problem.column >= 1
    lines = [p.line or 0 for p in check_text(text, "toml").problems]
    assert lines == sorted(lines)


def test_warnings_come_in_the_same_pass() -> None:
    # a timeframe whose end (09:30) is before its start (17:00) is read as overnight: valid, but 16.5
    # hours is named as a warning; a 5-fen surcharge looks like yuan typed as fen
    text = edit(six_mistakes(), '{ group = "peak", days = ["mon"',
                '{ group = "evening", days = ["sat"], start = "17:00", end = "09:30" },\n'
                '  { group = "peak", days = ["mon"')
    text = edit(text, "overstay_surcharge_fen = 500", "overstay_surcharge_fen = 5")
    problems = found(text)
    errors = {location for _, _, _, location, _, _ in SIX_MISTAKES}
    assert {k for k, p in problems.items() if p.severity == "error"} == {
        e.replace("timeframes[0]", "timeframes[1]") for e in errors}
    assert {k for k, p in problems.items() if p.severity == "warning"} == {
        "timeframes[0].end", "paid_area.overstay_surcharge_fen"}
    assert "17:00 to 09:30 the next day" in problems["timeframes[0].end"].message
    assert problems["timeframes[0].end"].line == line_of(text, '"evening"')


def test_each_mistake_alone_is_found_alone() -> None:
    # so the test above proves one pass: each mistake is found by itself, and all six together
    for what, old, new, location, _, _ in SIX_MISTAKES:
        assert set(found(edit(TINY, old, new))) == {location}, what


def test_the_same_mistakes_in_json_are_located_in_the_json_text() -> None:
    data = tomllib.loads(six_mistakes())
    text = json.dumps(data, indent=2)
    problems = found(text, "json")
    assert set(problems) == {location for _, _, _, location, _, _ in SIX_MISTAKES}
    lines = text.splitlines()
    assert '"base_fen": 2.5' in lines[(problems["leg_rules[0].base_fen"].line or 0) - 1]
    assert '"to": 33' in lines[(problems["networks.metro.edges[1].to"].line or 0) - 1]


def test_a_refused_element_keeps_the_others_numbered_as_written() -> None:
    # leg_rules[0] fails pydantic; the unknown network of leg_rules[3] is still called leg_rules[3]
    text = edit(edit(TINY, "base_fen = 200", 'base_fen = "200"'),
                'kind = "flat"\nnetwork = "bus"', 'kind = "flat"\nnetwork = "tram"')
    assert set(found(text)) == {"leg_rules[0].base_fen", "leg_rules[3].network"}


def test_dependent_problems_wait_for_the_refused_value() -> None:
    # a station whose id is refused is not also an "unknown station" in the edges that name it, and an
    # edge refused is not a "disconnected" network
    text = edit(TINY, '{ id = 3, name = "Charlie"', '{ id = 3.0, name = "Charlie"')
    assert set(found(text)) == {"stations[2].id"}
    text = edit(TINY, "{ from = 2, to = 3, distance_m = 3000", '{ from = 2, to = 3, distance_m = "3 km"')
    assert set(found(text)) == {"networks.metro.edges[1].distance_m"}


def test_rules_error_keeps_its_pairs_and_adds_located_issues() -> None:
    with pytest.raises(RulesError) as info:
        parse_rules(six_mistakes(), "toml")
    assert len(info.value.problems) == len(info.value.issues) == 6
    assert all(p.line is not None for p in info.value.issues)
    assert ("leg_rules[0].base_fen", "must be an integer") in info.value.problems


# --- hints ---

@pytest.mark.parametrize(("old", "new", "location", "hint"), [
    ("base_fen = 200", "base_fen = 2.0", "leg_rules[0].base_fen", f"{MONEY_HINT}; if 2 is yuan, write 200"),
    ("fare_fen = 200", "fare_fen = -2", "leg_rules[3].fare_fen", MONEY_HINT),
    ("distance_m = 1500", "distance_m = 1.5", "networks.metro.edges[0].distance_m",
     "if 1.5 is km, write 1500"),
    ('start = "07:30"', 'start = "7:30"', "timeframes[0].start", TIME_HINT),
    ('start = "07:30"', "start = 730", "timeframes[0].start", TIME_HINT),
    ("max_inside_min = 240", "max_inside_minutes = 240", "paid_area.max_inside_minutes",
     "did you mean 'max_inside_min'?"),
    ("window_min = 90\ndiscount_fen = 100", "window_min = 1.5\ndiscount_fen = 100",
     "transfer_rules[0].window_min", "minutes are integers; 1.5 hours is 90"),
    ("{ from = 1, to = 2, distance_m = 1500", "{ from = 1, to = 9, distance_m = 1500",
     "networks.metro.edges[0].to", "stations of network 'metro': 1, 2, 3, 4"),
    ('days = ["mon", "tue"', 'days = ["monday", "tue"', "timeframes[0].days[0]", "mon, tue, wed"),
    ("utc_offset_min = 480", "utc_offset_min = 8", None, None),  # valid: 8 minutes east is not an error
])
def test_hints_say_what_to_write(old: str, new: str, location: str | None, hint: str | None) -> None:
    problems = found(edit(TINY, old, new))
    if location is None:
        assert not problems
        return
    assert location in problems, problems
    assert hint is not None and hint in problems[location].hint


# --- warnings: yuan typed as fen ---

@pytest.mark.parametrize(("old", "new", "location", "rule"), [
    ("base_fen = 200", "base_fen = 2", "leg_rules[0].base_fen", "a fare under ¥0.10"),
    ("fare_fen = 200", "fare_fen = 20", "leg_rules[3].fare_fen", "median is ¥3.25"),
    ("{ from = 1, to = 4, fare_fen = 400 }", "{ from = 1, to = 4, fare_fen = 4 }",
     "leg_rules[2].pairs[0].fare_fen", "a fare under ¥0.10"),
    ("daily_cap_fen = 1000", "daily_cap_fen = 10", "rider_categories.adult.daily_cap_fen", "under ¥1.00"),
    ("max_balance_fen = 100000", "max_balance_fen = 1000", None, None),  # ¥10 is a small purse, not yuan
    ("min_entry_balance_fen = 200", "min_entry_balance_fen = 2", "min_entry_balance_fen", "under ¥1.00"),
    ("steps = [{ every_m = 4000, add_fen = 100 }]\n\n", "steps = [{ every_m = 4000, add_fen = 1 }]\n\n",
     "leg_rules[0].steps[0].add_fen", "for every 4000 m"),
    ("fen_off = 150", "fen_off = 1", "rider_categories.staff.fen_off", "a discount under ¥0.10"),
    ("overstay_surcharge_fen = 500", "overstay_surcharge_fen = 5", "paid_area.overstay_surcharge_fen",
     "a fare under ¥0.10"),
])
def test_yuan_typed_as_fen_is_a_warning(old: str, new: str, location: str | None, rule: str | None) -> None:
    text = edit(TINY, old, new)
    problems = found(text)
    rules = parse_rules(text, "toml")  # a warning never stops the rules
    assert rules.name == "tiny"
    if location is None:
        assert not problems
        return
    assert list(problems) == [location]
    warning = problems[location]
    assert warning.severity == "warning"
    assert "looks like yuan typed as fen" in warning.message and rule is not None and rule in warning.message
    assert MONEY_HINT in warning.hint
    assert warning.line == line_of(text, new.splitlines()[0])


def test_cheap_fares_in_a_cheap_table_are_not_warned_about() -> None:
    # 30 fen among fares of 20..40: a cheap system, not yuan (the median rule needs the others >= ¥1)
    text = edit(edit(edit(TINY, "base_fen = 200", "base_fen = 20"), "base_fen = 250", "base_fen = 30"),
                "fare_fen = 200", "fare_fen = 30")
    text = edit(text, "{ from = 1, to = 4, fare_fen = 400 }", "{ from = 1, to = 4, fare_fen = 40 }")
    assert not found(text)


def test_zero_is_never_warned_about() -> None:
    text = edit(edit(TINY, "fare_fen = 200", "fare_fen = 0"), "overstay_surcharge_fen = 500",
                "overstay_surcharge_fen = 0")
    assert not found(text)


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_the_examples_are_clean(example: str) -> None:
    outcome = check_text((EXAMPLES / example).read_text(encoding="utf-8"), "toml")
    assert outcome.rules is not None and outcome.problems == []


# --- ranges: overlaps and gaps named with both ends ---

def row(group: str, days: str, start: str, end: str) -> str:
    return f'\n  {{ group = "{group}", days = [{days}], start = "{start}", end = "{end}" }},'


PEAK = '{ group = "peak", days = ["mon", "tue", "wed", "thu", "fri"], start = "07:30", end = "09:00" },'


def test_overlapping_bands_name_the_overlap() -> None:
    text = edit(TINY, PEAK, PEAK + row("shoulder", '"fri"', "08:30", "10:00"))
    problem = found(text)["timeframes[1]"]
    assert problem.message == "overlaps timeframes[0] ('peak') at fri 08:30-09:00"
    assert problem.line == line_of(text, '"shoulder"')


def test_rows_of_one_band_overlapping_is_a_warning_naming_the_overlap() -> None:
    text = edit(TINY, PEAK, PEAK + row("peak", '"mon", "sat"', "08:00", "10:00"))
    problem = found(text)["timeframes[1]"]
    assert problem.severity == "warning"
    assert "same group 'peak' at mon 08:00-09:00" in problem.message


def test_an_overnight_band_past_midnight_is_named() -> None:
    night = '\n  { group = "night", days = ["fri"], start = "23:00", end = "01:00" },'
    text = edit(TINY, PEAK, PEAK + night)
    assert not found(text)  # two hours over midnight: a night band, as meant
    text = edit(TINY, PEAK, PEAK + row("evening", '"sat"', "17:00", "09:30"))
    problem = found(text)["timeframes[1].end"]
    assert problem.severity == "warning"
    assert "17:00 to 09:30 the next day, 16 h 30 min" in problem.message


def test_a_gap_without_a_default_band_is_named_with_its_ends() -> None:
    data: dict[str, Any] = tomllib.loads(TINY)
    data["default_timeframe"] = None
    data["timeframes"].append({"group": "offpeak", "days": ["sat", "sun"], "start": "00:00", "end": "24:00"})
    problems = {p.location: p for p in check_data(data).problems}
    assert "uncovered: mon 00:00-07:30, mon 09:00-tue 07:30, tue 09:00-wed 07:30, ..." in \
        problems["timeframes"].message


def test_distance_steps_that_overlap_name_both_ranges() -> None:
    text = edit(TINY, "steps = [{ every_m = 4000, add_fen = 100 }]\n\n",
                "steps = [{ up_to_m = 8000, every_m = 4000, add_fen = 100 },\n"
                "         { up_to_m = 6000, every_m = 1000, add_fen = 100 },\n"
                "         { every_m = 1000, add_fen = 100 }]\n\n")
    problem = found(text)["leg_rules[0].steps[1].up_to_m"]
    overlap = "steps[0] covers 4000..8000 m; steps[1] would cover 8000..6000 m, which overlaps it"
    assert overlap in problem.message
    assert problem.line == line_of(text, "up_to_m = 6000")


def test_distances_left_unpriced_are_named() -> None:
    text = edit(TINY, "steps = [{ every_m = 4000, add_fen = 100 }]\n\n",
                "steps = [{ up_to_m = 12000, every_m = 4000, add_fen = 100 }]\n\n")
    problem = found(text)["leg_rules[0].steps"]
    assert "distances beyond 12000 m have no fare" in problem.message and "12000..∞ m" in problem.hint


# --- positions ---

def test_source_map_finds_toml_keys_tables_and_elements() -> None:
    text = (
        '# a comment with [brackets] and "quotes" = 1\n'
        'name = "x # not a comment"\n'
        "note = '''\n[not.a.table]\n'''\n"
        '"quoted key".inner = 5\n'
        "[networks.metro]\n"
        "edges = [\n"
        "  { from = 1, to = 2 },  # first\n"
        "  {from=2,to=3},\n"
        "]\n"
        "[[leg_rules]]\n"
        "kind = 'flat'\n"
        "[[leg_rules]]\n"
        "pairs = [[1, 2], [3, 4]]\n"
        "[leg_rules.extra]\n"
        "deep = { a = { b = 1 } }\n"
    )
    tomllib.loads(text)  # valid TOML
    source = SourceMap(text, "toml")
    assert source.position(("name",)) == (2, 1)
    assert source.position(("quoted key", "inner")) == (6, 1)
    assert source.position(("networks", "metro")) == (7, 1)
    assert source.position(("networks", "metro", "edges", 0, "to")) == (9, 15)
    assert source.position(("networks", "metro", "edges", 1, "to")) == (10, 11)
    assert source.position(("networks", "metro", "edges", 1, "distance_m")) == (10, 3)  # missing: its table
    assert source.position(("leg_rules", 0, "kind")) == (13, 1)
    assert source.position(("leg_rules", 1)) == (14, 1)
    assert source.position(("leg_rules", 1, "pairs", 1, 0)) == (15, 19)
    assert source.position(("leg_rules", 1, "extra", "deep", "a", "b")) == (17, 16)
    assert source.position(("nothing",)) is None


def test_source_map_finds_json_keys_and_elements() -> None:
    text = '{\n  "a": [1, {"b": "x\\"y", "c": [true, null]}],\n  "d": {"e": -1.5e3}\n}'
    source = SourceMap(text, "json")
    assert source.position(("a", 1, "c", 1)) == (2, 38)
    assert source.position(("a", 1, "c")) == (2, 26)
    assert source.position(("d", "e")) == (3, 9)


def test_a_file_that_does_not_parse_is_located() -> None:
    with pytest.raises(RulesError) as info:
        parse_rules('name = "x"\nstations = [\n  { id = 1 name = "y" }\n]\n', "toml")
    assert info.value.issues[0].line == 3
    with pytest.raises(RulesError) as info:
        parse_rules('{\n  "name": "x",\n  "stations": [}\n', "json")
    assert (info.value.issues[0].line, info.value.issues[0].column) == (3, 16)


# --- any damage: never a crash, the verdict of plain pydantic kept, every problem located ---

def _leaves(node: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    if isinstance(node, dict):
        return [path] + [p for k, v in node.items() for p in _leaves(v, (*path, k))]
    if isinstance(node, list):
        return [path] + [p for i, v in enumerate(node) for p in _leaves(v, (*path, i))]
    return [path]


def _child(node: Any, item: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(item)
    if isinstance(node, list) and isinstance(item, int) and item < len(node):
        return node[item]
    return None


TINY_DATA = tomllib.loads(TINY)
PATHS = [p for p in _leaves(TINY_DATA) if p]
JUNK: list[Any] = [None, -1, 0, 1, 2.5, "x", "", [], {}, True, 10**12, "07:30", [1], {"kind": "od"}, 3]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(PATHS), st.sampled_from(JUNK)), min_size=1, max_size=4))
def test_any_damage_is_reported_without_a_crash(damage: list[tuple[tuple[str | int, ...], Any]]) -> None:
    data = copy.deepcopy(TINY_DATA)
    for path, junk in damage:  # an earlier junk may have replaced a table on a later path: then skip it
        node: Any = data
        for item in path[:-1]:
            node = _child(node, item)
        last = path[-1]
        if isinstance(node, dict):  # noqa: SIM114 (two branches so mypy narrows the list index)
            node[last] = copy.deepcopy(junk)
        elif isinstance(node, list) and isinstance(last, int) and last < len(node):
            node[last] = copy.deepcopy(junk)
    text = json.dumps(data, indent=1)
    outcome = check_text(text, "json")
    try:
        FareRules.model_validate(data)
        valid = True
    except (ValidationError, RulesError):
        valid = False
    assert (outcome.rules is not None) == valid, outcome.problems
    for problem in outcome.problems:
        assert problem.message
        if problem.path:
            assert problem.line is not None and problem.column is not None


def test_a_value_refused_is_the_only_error_reported() -> None:
    # Every leaf of tiny.toml (and every table below the top level) replaced by each kind of junk: when
    # pydantic refuses the junk, the problems are at that place only. No cross-check reports a
    # consequence of the refusal elsewhere (an edge to a station whose id was refused, a band whose
    # group was refused, a network disconnected by a refused segment...). Junk pydantic accepts (a
    # valid value that clashes with another) is left to the cross-checks and not counted here.
    cases = 0
    for path in PATHS:
        if len(path) < 2:
            continue  # a whole top-level table replaced: references to what it held are rightly unknown
        for junk in JUNK:
            data = copy.deepcopy(TINY_DATA)
            parent: Any = data
            for item in path[:-1]:
                parent = _child(parent, item)
            parent[path[-1]] = copy.deepcopy(junk)
            try:
                FareRules.model_validate(data)
                continue
            except ValidationError as exc:
                if all(e["type"] == "value_error" and not e["loc"] for e in exc.errors()):
                    continue  # only the cross-checks failed: the junk was a valid value
            cases += 1
            elsewhere = [p for p in check_data(data).problems if p.severity == "error"
                         and p.path[:len(path)] != path and path[:len(p.path)] != p.path]
            assert not elsewhere, (path, junk, elsewhere)
    assert cases > 1000


def test_parse_rules_and_plain_validation_leave_the_warnings_out() -> None:
    text = edit(TINY, "base_fen = 200", "base_fen = 3")
    assert parse_rules(text, "toml").leg_rules[0].model_dump()["base_fen"] == 3
    assert validate_text(text, "toml").problems == []
    assert [p.location for p in check_text(text, "toml").problems] == ["leg_rules[0].base_fen"]


def test_rules_error_still_takes_location_and_reason_pairs() -> None:
    error = RulesError([("networks.metro.edges[1].to", "unknown station 9"), ("", "not valid TOML")])
    assert error.problems == [("networks.metro.edges[1].to", "unknown station 9"), ("", "not valid TOML")]
    assert str(error) == "networks.metro.edges[1].to: unknown station 9\nnot valid TOML"
