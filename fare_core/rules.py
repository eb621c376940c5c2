"""The operator's fare rules: a pydantic model read from TOML or JSON, checked before anything compiles.

The shape follows GTFS-Fares v2 so that a later import maps field for field:

| here                  | GTFS-Fares v2                                   |
|-----------------------|-------------------------------------------------|
| networks.<id>         | networks.txt / routes.network_id                |
| stations[]            | areas.txt + stop_areas.txt (one area a station) |
| timeframes[]          | timeframes.txt (timeframe_group_id = group)     |
| rider_categories.<id> | rider_categories.txt                            |
| leg_rules[]           | fare_leg_rules.txt (+ fare_products.txt)        |
| transfer_rules[]      | fare_transfer_rules.txt                         |

What GTFS lists product by product (a fare per OD pair) we also allow as rules the operator actually
writes: a distance-band formula over the track graph, or a zone matrix; explicit OD pairs override either.

Money is integer fen and distances integer metres; a float anywhere is refused (strict mode), because a
fare table must be exact. Every problem is reported with its location (`networks.metro.edges[3].
distance_m: must be > 0`) in one RulesError, so an operator fixes the file in one pass.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MINUTES_PER_DAY = 24 * 60
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_U32 = 0xFFFFFFFF

Fen = Annotated[int, Field(ge=0, le=MAX_U32)]
Purse = Annotated[int, Field(ge=0, le=0x7FFFFFFF)]  # the card's balance is a signed 32-bit integer
Percent = Annotated[int, Field(ge=0, le=100)]
StationId = Annotated[int, Field(ge=1, le=0xFFFF)]
Metres = Annotated[int, Field(gt=0, le=MAX_U32)]
Minutes = Annotated[int, Field(ge=0, le=MAX_U32 // 60)]
Name = Annotated[str, Field(min_length=1, max_length=100)]
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

_TIME_RE = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")


class RulesError(ValueError):
    """The rules are invalid; `problems` holds (location, why) pairs, the message one line for each."""

    def __init__(self, problems: Iterable[tuple[str, str]]) -> None:
        self.problems: list[tuple[str, str]] = list(problems)
        super().__init__("\n".join(f"{where}: {why}" if where else why for where, why in self.problems))


def minute_of_day(text: str) -> int:
    """'HH:MM' (00:00..24:00) -> minutes since midnight."""
    match = _TIME_RE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a time of day written HH:MM")
    value = int(match[1]) * 60 + int(match[2])
    if value > MINUTES_PER_DAY:
        raise ValueError(f"{text!r} is after 24:00")
    return value


class _Model(BaseModel):
    # strict: 2.0 is not 2 fen and "200" is not 200; forbid: a misspelt key is an error, not a default.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=True)


class Edge(_Model):
    """Track between two neighbouring stations of one network (either direction)."""

    from_station: StationId = Field(alias="from")
    to_station: StationId = Field(alias="to")
    distance_m: Metres
    line: str | None = None  # when given, both stations must be on it


class Network(_Model):
    """A GTFS network: a metro (entry and exit taps, priced by the trip) or a flat-fare bus (tap on only)."""

    name: str = ""
    mode: Literal["metro", "rail", "tram", "bus", "ferry", "other"] = "metro"
    fare_collection: Literal["entry_exit", "flat"]
    edges: list[Edge] = []


class Station(_Model):
    """A GTFS area: a station (or a bus, for a flat network) with the operator's 16-bit id."""

    id: StationId
    name: Name
    network: str
    lines: list[str] = []
    zone: str | None = None  # used by a "zones" leg rule


def _every_day() -> list[Day]:
    return ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class Timeframe(_Model):
    """A GTFS timeframe: local time [start, end) on the given days; end <= start runs past midnight."""

    group: Name  # the time band this belongs to (several rows may share one group)
    days: list[Day] = Field(default_factory=lambda: _every_day())
    start: str
    end: str

    @field_validator("start", "end")
    @classmethod
    def _time(cls, value: str) -> str:
        minute_of_day(value)
        return value

    @property
    def start_min(self) -> int:
        return minute_of_day(self.start)

    @property
    def end_min(self) -> int:
        return minute_of_day(self.end)


class RiderCategory(_Model):
    """A GTFS rider category with its discount (at most one kind) and its spending limits."""

    name: str = ""
    percent_off: Percent | None = None
    fen_off: Fen | None = None
    free: bool = False
    daily_cap_fen: Fen = 0  # 0 = no cap
    monthly_threshold_fen: Fen = 0  # fen spent in the month before monthly_percent_off applies; 0 = none
    monthly_percent_off: Percent = 0

    def discounted(self, fare: int) -> int:
        """The category's price for an adult fare; percentages round half up to the fen."""
        if self.free:
            return 0
        if self.percent_off is not None:
            return (fare * (100 - self.percent_off) + 50) // 100
        if self.fen_off is not None:
            return max(0, fare - self.fen_off)
        return fare


class DistanceStep(_Model):
    """Above the previous limit and up to `up_to_m`: `add_fen` for every `every_m` metres or part of it."""

    up_to_m: Metres | None = None  # None: no upper limit (only the last step)
    every_m: Metres
    add_fen: Fen


class _LegRule(_Model):
    network: str
    timeframe: str | None = None  # None: every time band without a rule of its own
    # None: the adult price, from which each category's discount derives its own. A category named
    # here pays this rule's fares as written (no discount), like a GTFS fare product with a
    # rider_category_id; pairs its own rules leave unpriced fall back to the discounted adult price.
    rider_category: str | None = None


class DistanceLegRule(_LegRule):
    """Fare by shortest track distance: base_fen up to base_up_to_m, then the steps in order."""

    kind: Literal["distance"]
    base_fen: Fen
    base_up_to_m: Annotated[int, Field(ge=0, le=MAX_U32)]
    steps: list[DistanceStep] = []
    max_fen: Fen | None = None

    def fare(self, distance_m: int) -> int:
        fare = self.base_fen
        lower = self.base_up_to_m
        for step in self.steps:
            if distance_m <= lower:
                break
            upper = distance_m if step.up_to_m is None else min(distance_m, step.up_to_m)
            fare += -(-(upper - lower) // step.every_m) * step.add_fen  # ceil: "or part of it"
            lower = step.up_to_m if step.up_to_m is not None else upper
        return fare if self.max_fen is None else min(fare, self.max_fen)


class ZoneLegRule(_LegRule):
    """Fare by the zones of the entry and exit stations: matrix[from zone][to zone]."""

    kind: Literal["zones"]
    zones: list[Name] = Field(min_length=1)
    matrix: list[list[Fen]]


class FlatLegRule(_LegRule):
    """One fare for boarding anywhere on a flat network (a bus)."""

    kind: Literal["flat"]
    fare_fen: Fen


class OdPair(_Model):
    from_station: StationId = Field(alias="from")
    to_station: StationId = Field(alias="to")
    fare_fen: Fen
    both_ways: bool = True


class OdLegRule(_LegRule):
    """Explicit fares for origin-destination pairs; they override the distance or zone fare."""

    kind: Literal["od"]
    pairs: list[OdPair] = Field(min_length=1)


LegRule = Annotated[DistanceLegRule | ZoneLegRule | FlatLegRule | OdLegRule, Field(discriminator="kind")]


class TransferRule(_Model):
    """A leg on to_network starting within window_min of a leg on from_network ending is discounted."""

    from_network: str
    to_network: str
    window_min: Annotated[int, Field(gt=0, le=MAX_U32 // 60)]
    discount_fen: Fen = 0
    discount_percent: Percent = 0  # applied after discount_fen


class PaidArea(_Model):
    """Rules of the entry/exit networks' paid area (times in minutes, money in fen)."""

    max_inside_min: Minutes = 0  # 0 = unlimited
    overstay_surcharge_fen: Fen = 0
    same_station_window_min: Minutes = 0  # exit at the entry station within this...
    same_station_fare_fen: Fen = 0  # ...costs this (adult; the category discount applies)
    missing_exit_fare_fen: Fen | None = None  # None: the highest fare from the entry station
    anti_passback_min: Minutes = 0


class DenyListRules(_Model):
    """What a deny-listed phone gets where the back office's reconciliation must decide the same.

    New entries and flat-fare (bus) boardings of a deny-listed phone are always refused. At an exit of an
    entry/exit network, with the wallet showing an open entry (the rider is inside the paid area):
    "let_out_charged" opens the gate and charges the normal fare, blocking the wallet in the same write
    (the genuine owner of a cloned phone is not trapped inside); "refuse" refuses it like any other tap.
    """

    exit_with_open_entry: Literal["let_out_charged", "refuse"] = "let_out_charged"


class FareRules(_Model):
    """Everything an operator decides about fares; compile_rules() turns it into a TableData."""

    name: Name
    utc_offset_min: Annotated[int, Field(gt=-MINUTES_PER_DAY, lt=MINUTES_PER_DAY)] = 480
    service_day_start: str = "04:00"
    min_entry_balance_fen: Purse = 0
    # The categories the minimum applies to; None: every category the compiled table charges anything
    # (a free or fully discounted category is never refused for a balance it will not be charged).
    min_entry_categories: list[Name] | None = None
    max_balance_fen: Purse = 100_000
    max_transfers: Annotated[int, Field(ge=0, le=254)] = 1  # the card counts transfers in a byte
    networks: dict[Name, Network] = Field(min_length=1)
    stations: list[Station] = Field(min_length=1)
    default_timeframe: str | None = "offpeak"  # band of every minute no timeframe covers
    timeframes: list[Timeframe] = []
    rider_categories: dict[Name, RiderCategory] = Field(min_length=1)
    leg_rules: list[LegRule] = Field(min_length=1)
    transfer_rules: list[TransferRule] = []
    paid_area: PaidArea = PaidArea()
    deny_list: DenyListRules = DenyListRules()

    @field_validator("service_day_start")
    @classmethod
    def _day_start(cls, value: str) -> str:
        if minute_of_day(value) >= MINUTES_PER_DAY:
            raise ValueError("must be before 24:00")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> FareRules:
        problems = _Checker(self).run()
        if problems:
            raise RulesError(problems)
        return self

    # --- derived views used by the compiler ---

    @property
    def band_names(self) -> list[str]:
        """Time bands in table order: the default first, then timeframe groups as they first appear."""
        names = [] if self.default_timeframe is None else [self.default_timeframe]
        for frame in self.timeframes:
            if frame.group not in names:
                names.append(frame.group)
        return names

    @property
    def day_start_min(self) -> int:
        return minute_of_day(self.service_day_start)


def timeframe_minutes(frame: Timeframe) -> Iterable[int]:
    """Local minutes of the week (Monday 00:00 = 0) a timeframe covers; past Sunday midnight wraps."""
    start, end = frame.start_min, frame.end_min
    length = end - start if end > start else end + MINUTES_PER_DAY - start
    week = 7 * MINUTES_PER_DAY
    for day in frame.days:
        first = DAYS.index(day) * MINUTES_PER_DAY + start
        for minute in range(first, first + length):
            yield minute % week


def _clock(minute_of_week: int) -> str:
    day, minute = divmod(minute_of_week, MINUTES_PER_DAY)
    return f"{DAYS[day]} {minute // 60:02d}:{minute % 60:02d}"


class _Checker:
    """Cross-field checks pydantic cannot express; collects every problem with its location."""

    def __init__(self, rules: FareRules) -> None:
        self.rules = rules
        self.problems: list[tuple[str, str]] = []
        self.station_network: dict[int, str] = {}

    def add(self, where: str, why: str) -> None:
        self.problems.append((where, why))

    def run(self) -> list[tuple[str, str]]:
        self.check_counts()
        self.check_stations()
        self.check_edges()
        self.check_timeframes()
        self.check_categories()
        self.check_leg_rules()
        self.check_transfers()
        return self.problems

    def check_counts(self) -> None:
        r = self.rules
        if len(r.networks) >= 255:
            self.add("networks", f"{len(r.networks)} networks; at most 254")
        if len(r.rider_categories) >= 256:
            self.add("rider_categories", f"{len(r.rider_categories)} categories; at most 255")
        if len(r.band_names) >= 256:
            self.add("timeframes", f"{len(r.band_names)} time bands; at most 255")

    def check_stations(self) -> None:
        first_seen: dict[int, int] = {}
        for i, station in enumerate(self.rules.stations):
            where = f"stations[{i}]"
            if station.id in first_seen:
                self.add(f"{where}.id",
                         f"duplicate station id {station.id} (also stations[{first_seen[station.id]}])")
                continue
            first_seen[station.id] = i
            if station.network not in self.rules.networks:
                self.add(f"{where}.network", f"unknown network {station.network!r}{self._known_networks()}")
                continue
            self.station_network[station.id] = station.network
            if len(set(station.lines)) != len(station.lines):
                self.add(f"{where}.lines", "duplicate line")
        used = set(self.station_network.values())
        for network_id in self.rules.networks:
            if network_id not in used:
                self.add(f"networks.{network_id}", "has no stations")

    def check_edges(self) -> None:
        lines = {s.id: set(s.lines) for s in self.rules.stations}
        for network_id, network in self.rules.networks.items():
            if network.edges and network.fare_collection == "flat":
                self.add(f"networks.{network_id}.edges", "a flat-fare network has no priced track segments")
                continue
            seen: dict[frozenset[int], int] = {}
            for i, edge in enumerate(network.edges):
                where = f"networks.{network_id}.edges[{i}]"
                ok = True
                for field, station in (("from", edge.from_station), ("to", edge.to_station)):
                    if station not in self.station_network:
                        self.add(f"{where}.{field}", f"unknown station {station}")
                        ok = False
                    elif self.station_network[station] != network_id:
                        self.add(f"{where}.{field}",
                                 f"station {station} belongs to network {self.station_network[station]!r}")
                        ok = False
                if not ok:
                    continue
                if edge.from_station == edge.to_station:
                    self.add(where, f"a segment from station {edge.from_station} to itself")
                    continue
                key = frozenset((edge.from_station, edge.to_station))
                if key in seen:
                    self.add(where, f"duplicate segment {edge.from_station}-{edge.to_station} "
                                    f"(also networks.{network_id}.edges[{seen[key]}])")
                seen[key] = i
                if edge.line is not None:
                    for station in (edge.from_station, edge.to_station):
                        if edge.line not in lines[station]:
                            self.add(f"{where}.line", f"station {station} is not on line {edge.line!r}")

    def check_timeframes(self) -> None:
        r = self.rules
        owner: dict[int, int] = {}
        for i, frame in enumerate(r.timeframes):
            where = f"timeframes[{i}]"
            if frame.group == r.default_timeframe:
                self.add(f"{where}.group", f"{frame.group!r} is the default_timeframe; it needs no rows")
                continue
            if len(set(frame.days)) != len(frame.days):
                self.add(f"{where}.days", "duplicate day")
                continue
            if frame.start_min == frame.end_min:
                self.add(f"{where}.end", "must differ from start")
                continue
            if frame.start_min == MINUTES_PER_DAY:
                self.add(f"{where}.start", "must be before 24:00")
                continue
            for minute in timeframe_minutes(frame):
                other = owner.setdefault(minute, i)
                if other != i and r.timeframes[other].group != frame.group:
                    self.add(where, f"overlaps timeframes[{other}] ({r.timeframes[other].group!r}) "
                                    f"at {_clock(minute)}")
                    break
        if r.default_timeframe is None:
            if not r.timeframes:
                self.add("timeframes", "no timeframes and no default_timeframe: no time band at all")
            else:
                gap = next((m for m in range(7 * MINUTES_PER_DAY) if m not in owner), None)
                if gap is not None:
                    self.add("timeframes",
                             f"{_clock(gap)} is in no timeframe and default_timeframe is not set")

    def check_categories(self) -> None:
        for category_id, category in self.rules.rider_categories.items():
            where = f"rider_categories.{category_id}"
            kinds = [k for k, v in (("percent_off", category.percent_off), ("fen_off", category.fen_off),
                                    ("free", category.free or None)) if v is not None]
            if len(kinds) > 1:
                self.add(where, f"give at most one discount kind, not {' and '.join(kinds)}")
            if category.monthly_percent_off and not category.monthly_threshold_fen:
                self.add(f"{where}.monthly_threshold_fen", "must be > 0 when monthly_percent_off is set")
        known = self.rules.rider_categories
        for i, name in enumerate(self.rules.min_entry_categories or []):
            where = f"min_entry_categories[{i}]"
            if name not in known:
                self.add(where, f"unknown rider category {name!r} (known: {', '.join(known)})")
            elif name in (self.rules.min_entry_categories or [])[:i]:
                self.add(where, f"{name!r} is listed twice")

    def check_leg_rules(self) -> None:
        r = self.rules
        bands = r.band_names
        base: dict[tuple[str, str | None, str | None], int] = {}  # (network, timeframe, category) -> index
        od: dict[tuple[str, str | None, str | None], dict[tuple[int, int], int]] = defaultdict(dict)
        for i, rule in enumerate(r.leg_rules):
            where = f"leg_rules[{i}]"
            network = r.networks.get(rule.network)
            if network is None:
                self.add(f"{where}.network", f"unknown network {rule.network!r}{self._known_networks()}")
                continue
            if rule.timeframe is not None and rule.timeframe not in bands:
                self.add(f"{where}.timeframe",
                         f"unknown timeframe {rule.timeframe!r} (known: {', '.join(bands)})")
                continue
            if rule.rider_category is not None and rule.rider_category not in r.rider_categories:
                self.add(f"{where}.rider_category", f"unknown rider category {rule.rider_category!r} "
                                                    f"(known: {', '.join(r.rider_categories)})")
                continue
            flat = network.fare_collection == "flat"
            if flat != isinstance(rule, FlatLegRule):
                self.add(f"{where}.kind", f"a {rule.kind!r} rule cannot price {network.fare_collection} "
                                          f"network {rule.network!r}")
                continue
            key = (rule.network, rule.timeframe, rule.rider_category)
            if isinstance(rule, OdLegRule):
                self.check_od(where, rule, od[key])
                continue
            if key in base:
                self.add(where, f"duplicates leg_rules[{base[key]}] (network {rule.network!r}, "
                                f"timeframe {rule.timeframe or 'all'}, rider category "
                                f"{rule.rider_category or 'all'})")
                continue
            base[key] = i
            if isinstance(rule, DistanceLegRule):
                self.check_distance(where, rule)
            elif isinstance(rule, ZoneLegRule):
                self.check_zones(where, rule)
        # The adult price (rules without a rider category) must cover everything; category rules refine it.
        self.check_coverage({k[:2]: v for k, v in base.items() if k[2] is None},
                            {k[:2]: v for k, v in od.items() if k[2] is None})

    def check_distance(self, where: str, rule: DistanceLegRule) -> None:
        lower = rule.base_up_to_m
        for j, step in enumerate(rule.steps):
            if step.up_to_m is None:
                if j != len(rule.steps) - 1:
                    self.add(f"{where}.steps[{j}].up_to_m", "only the last step may be open-ended")
                return
            if step.up_to_m <= lower:
                self.add(f"{where}.steps[{j}].up_to_m",
                         f"{step.up_to_m} must be greater than the previous limit {lower}")
                return
            lower = step.up_to_m
        if rule.max_fen is None:
            self.add(f"{where}.steps", f"distances beyond {lower} m have no fare: end with an open-ended "
                                       f"step (no up_to_m) or set max_fen")

    def check_zones(self, where: str, rule: ZoneLegRule) -> None:
        n = len(rule.zones)
        if len(set(rule.zones)) != n:
            self.add(f"{where}.zones", "duplicate zone")
        if len(rule.matrix) != n:
            self.add(f"{where}.matrix", f"{len(rule.matrix)} rows for {n} zones")
        for j, row in enumerate(rule.matrix):
            if len(row) != n:
                self.add(f"{where}.matrix[{j}]", f"{len(row)} columns for {n} zones")
        for k, station in enumerate(self.rules.stations):
            if station.network == rule.network and station.zone not in rule.zones:
                self.add(f"stations[{k}].zone", f"{station.zone!r} is not a zone of {where} "
                                                f"({', '.join(rule.zones)})")

    def check_od(self, where: str, rule: OdLegRule, pairs: dict[tuple[int, int], int]) -> None:
        for j, pair in enumerate(rule.pairs):
            ok = True
            for field, station in (("from", pair.from_station), ("to", pair.to_station)):
                if self.station_network.get(station) != rule.network:
                    self.add(f"{where}.pairs[{j}].{field}",
                             f"station {station} is not a station of network {rule.network!r}")
                    ok = False
            if not ok:
                continue
            keys = [(pair.from_station, pair.to_station)]
            if pair.both_ways and pair.from_station != pair.to_station:
                keys.append((pair.to_station, pair.from_station))
            for key in keys:
                if key in pairs:
                    self.add(f"{where}.pairs[{j}]", f"fare {key[0]}->{key[1]} given twice")
                    break
                pairs[key] = j

    def check_coverage(self, base: dict[tuple[str, str | None], int],
                       od: dict[tuple[str, str | None], dict[tuple[int, int], int]]) -> None:
        """Every band of every network has a fare, and every OD pair a distance or an explicit fare."""
        r = self.rules
        for network_id, network in r.networks.items():
            stations = [s for s, n in self.station_network.items() if n == network_id]
            for band in r.band_names:
                key = (network_id, band) if (network_id, band) in base else (network_id, None)
                rule_index = base.get(key)
                if network.fare_collection == "flat":
                    if rule_index is None:
                        self.add("leg_rules",
                                 f"flat network {network_id!r} has no fare in timeframe {band!r}")
                    continue
                explicit = set(od.get((network_id, band), {})) | set(od.get((network_id, None), {}))
                rule = None if rule_index is None else r.leg_rules[rule_index]
                reach = _components(stations, network.edges) if isinstance(rule, DistanceLegRule) else None
                missing = None
                for a in stations:
                    for b in stations:
                        if (a, b) in explicit or isinstance(rule, ZoneLegRule):
                            continue
                        if reach is not None and reach[a] == reach[b]:
                            continue
                        missing = (a, b)
                        break
                    if missing:
                        break
                if missing is None:
                    continue
                if rule is None:
                    self.add("leg_rules", f"network {network_id!r} has no fare in timeframe {band!r} for "
                                          f"{missing[0]}->{missing[1]} (add a distance, zones or od rule)")
                else:
                    self.add(f"networks.{network_id}.edges",
                             f"disconnected: station {missing[1]} is unreachable from station {missing[0]} "
                             f"(needed by leg_rules[{rule_index}]; add a segment or an od fare)")

    def check_transfers(self) -> None:
        seen: dict[tuple[str, str], int] = {}
        for i, rule in enumerate(self.rules.transfer_rules):
            where = f"transfer_rules[{i}]"
            ok = True
            for field in ("from_network", "to_network"):
                value = getattr(rule, field)
                if value not in self.rules.networks:
                    self.add(f"{where}.{field}", f"unknown network {value!r}{self._known_networks()}")
                    ok = False
            key = (rule.from_network, rule.to_network)
            if ok and key in seen:
                self.add(where, f"duplicates transfer_rules[{seen[key]}] ({key[0]} -> {key[1]})")
            seen.setdefault(key, i)

    def _known_networks(self) -> str:
        return f" (known: {', '.join(self.rules.networks)})"


def _components(stations: list[int], edges: list[Edge]) -> dict[int, int]:
    """Connected component label of each station (union-find over the segments)."""
    parent = {s: s for s in stations}

    def find(s: int) -> int:
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    for edge in edges:
        if edge.from_station in parent and edge.to_station in parent:
            parent[find(edge.from_station)] = find(edge.to_station)
    return {s: find(s) for s in stations}


# --- reading ---

_READABLE = {
    "missing": "required",
    "extra_forbidden": "unknown field",
    "int_type": "must be an integer",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a table",
    "model_type": "must be a table",
}


def _location(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for i, item in enumerate(loc):
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif i == 2 and loc[0] == "leg_rules" and item in ("distance", "zones", "flat", "od"):
            continue  # pydantic names the union member; the operator wrote `kind = ...` already
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _why(error: Any) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        found = f"{ctx['tag']!r} is not a known kind" if "tag" in ctx else "kind is required"
        return f"{found}: kind = \"distance\", \"zones\", \"flat\" or \"od\""
    if kind in _READABLE:
        return _READABLE[kind]
    for key, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if key in ctx and kind.startswith(("greater", "less")):
            return f"must be {op} {ctx[key]}"
    if kind == "literal_error" and "expected" in ctx:
        return f"must be {ctx['expected']}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} entries"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} entries"
    if kind == "string_too_short":
        return "must not be empty"
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


def _from_validation_error(exc: ValidationError) -> RulesError:
    problems: list[tuple[str, str]] = []
    for error in exc.errors():
        inner = (error.get("ctx") or {}).get("error")
        if isinstance(inner, RulesError):
            prefix = _location(error["loc"])
            problems.extend(((f"{prefix}.{w}" if prefix and w else prefix or w), why)
                            for w, why in inner.problems)
        else:
            problems.append((_location(error["loc"]), _why(error)))
    return RulesError(problems)


def rules_from_data(data: Any) -> FareRules:
    """Validate already-parsed data (a dict from TOML or JSON); raise RulesError listing every problem."""
    if not isinstance(data, dict):
        raise RulesError([("", f"the rules must be a table/object, not {type(data).__name__}")])
    try:
        return FareRules.model_validate(data)
    except ValidationError as exc:
        raise _from_validation_error(exc) from None


def parse_rules(text: str, fmt: Literal["toml", "json"]) -> FareRules:
    """Parse and validate rules written as TOML or JSON text."""
    if fmt == "toml":
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RulesError([("", f"not valid TOML: {exc}")]) from None
    elif fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RulesError([("", f"not valid JSON: {exc}")]) from None
    else:
        raise RulesError([("", f"unknown rules format {fmt!r} (toml or json)")])
    return rules_from_data(data)


def load_rules(path: str | Path) -> FareRules:
    """Read rules from a .toml or .json file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise RulesError([("", f"{path}: rules files end in .toml or .json, not {suffix or 'nothing'!r}")])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError([("", f"{path}: cannot read: {exc}")]) from None
    return parse_rules(text, "toml" if suffix == ".toml" else "json")
