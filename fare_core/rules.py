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
fare table must be exact. Every problem is reported at once, with its location (`networks.metro.edges[3].
distance_m: must be > 0`), its line and column when the text is known, and a hint where one helps, in one
RulesError, so an operator fixes the file in one pass. One pass holds when pydantic refuses part of the
file too: the cross-checks then run on a draft of what did validate (see `validate`), so a wrong type
in one station does not hide an unknown network in a leg rule.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import re
import tomllib
import types
import typing
import zoneinfo
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fare_core.record import U8_MAX
from fare_core.rules_problem import (
    METRES_HINT,
    MINUTES_HINT,
    MONEY_HINT,
    TIME_HINT,
    LocPath,
    Problem,
    format_path,
)
from fare_core.rules_source import SourceMap
from fare_core.table_data import MAX_CAP_FEN

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
#: A daily or weekly cap: the card keeps the day's and the week's spend in 16 bits.
CapFen = Annotated[int, Field(ge=0, le=MAX_CAP_FEN)]


def _date_text(value: Any) -> Any:
    """A TOML date literal (2026-10-01 unquoted) is read as the text it stands for."""
    return value.isoformat() if isinstance(value, _dt.date) and not isinstance(value, _dt.datetime) else value


def parse_date(text: str) -> _dt.date:
    """'YYYY-MM-DD' -> date; ValueError naming the text otherwise."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise ValueError(f"{text!r} is not a date written YYYY-MM-DD")
    try:
        return _dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date of the calendar") from None


def _checked_date(value: str) -> str:
    parse_date(value)
    return value


IsoDate = Annotated[str, BeforeValidator(_date_text), AfterValidator(_checked_date)]

_TIME_RE = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")

class RulesError(ValueError):
    """The rules are invalid. `issues` holds every error as a Problem (with line and column when the text
    was known); `problems` the same as (location, why) pairs; the message is one line for each."""

    def __init__(self, issues: Iterable[Problem | tuple[str, str]]) -> None:
        # (location, why) pairs are still taken, as before Problems: the location kept as written
        found = [p if isinstance(p, Problem) else Problem((p[0],) if p[0] else (), p[1]) for p in issues]
        self.issues: list[Problem] = [p for p in found if p.severity == "error"]
        self.problems: list[tuple[str, str]] = [(p.location, p.message) for p in self.issues]
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
    # A station on a zone boundary: in each of these zones, priced by whichever reading is cheapest
    # (GTFS stop_areas with one stop in several areas). Give zone or zones, not both.
    zones: list[Name] = []

    @property
    def zone_names(self) -> list[str]:
        """The zones the station is read in: zones, else [zone], else none."""
        return list(self.zones) if self.zones else ([] if self.zone is None else [self.zone])


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


class MonthlyTier(_Model):
    """One step of a monthly scheme: from this count in the month (fen spent or rides taken, before the
    leg), percent_off holds until the next tier's count (0 ends a discount)."""

    from_fen: Fen | None = None  # basis "spend"
    from_rides: Annotated[int, Field(ge=0, le=U8_MAX)] | None = None  # basis "rides" (the card counts to 255)
    percent_off: Percent


class MonthlyScheme(_Model):
    """A category's monthly scheme: ordered tiers by spend or by ride count.

    A leg is priced at the tier the month's count has reached *before* it: the leg that crosses a
    threshold pays the old tier's price, the next one the new tier's (Beijing: "满100元以后的乘次").
    """

    basis: Literal["spend", "rides"] = "spend"
    tiers: list[MonthlyTier] = Field(min_length=1)
    counted_networks: list[Name] | None = None  # legs on these count toward the month; None: every one
    discounted_networks: list[Name] | None = None  # legs on these get the tier's discount; None: counted
    surcharges_count: bool = False  # the overstay surcharge counts toward the month's spend


class RiderCategory(_Model):
    """A GTFS rider category with its discount (at most one kind) and its spending limits."""

    name: str = ""
    percent_off: Percent | None = None
    fen_off: Fen | None = None
    free: bool = False
    # The networks the discount above applies on (students half price on the metro, full on the bus);
    # None: every network.
    discount_networks: list[Name] | None = None
    daily_cap_fen: CapFen = 0  # 0 = no cap
    weekly_cap_fen: CapFen = 0  # 0 = no cap; the week is the table's weekly_cap_period
    # One spend threshold and its percent on every network: monthly = { tiers = [...] } in short.
    monthly_threshold_fen: Fen = 0  # fen spent in the month before monthly_percent_off applies; 0 = none
    monthly_percent_off: Percent = 0
    monthly: MonthlyScheme | None = None

    def scheme(self) -> MonthlyScheme | None:
        """The monthly scheme, the one-threshold form written as a one-tier scheme."""
        if self.monthly is not None:
            return self.monthly
        if self.monthly_threshold_fen:
            tier = MonthlyTier(from_fen=self.monthly_threshold_fen, percent_off=self.monthly_percent_off)
            return MonthlyScheme(tiers=[tier])
        return None

    def discounts(self, network: str) -> bool:
        return self.discount_networks is None or network in self.discount_networks

    def discounted_on(self, network: str, fare: int) -> int:
        """The category's price of an adult fare on a network (full price where its discount is not)."""
        return self.discounted(fare) if self.discounts(network) else fare

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


class Calendar(_Model):
    """Dates priced as another weekday: public holidays as a Sunday, a special service day (GTFS
    calendar_dates, for the timeframes). Local dates, the whole day from 00:00."""

    name: str = ""
    dates: list[IsoDate] = Field(min_length=1)
    price_as: Day


OverdraftTap = Literal["exit", "boarding"]


def _both_taps() -> list[OverdraftTap]:
    return ["exit", "boarding"]


class Overdraft(_Model):
    """An allowed tap may take the balance below zero, by at most limit_fen, once: only from a balance
    above zero (Octopus-style). A negative balance enters nowhere and is recovered at the next top-up."""

    limit_fen: Purse = 0  # 0 = no overdraft
    taps: list[OverdraftTap] = Field(default_factory=lambda: _both_taps())


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
    # An IANA time zone (Europe/London): its summer time compiled in over valid_from..valid_until.
    # Give time_zone or utc_offset_min, not both.
    time_zone: Name | None = None
    valid_from: IsoDate = "2020-01-01"
    valid_until: IsoDate = "2040-01-01"
    service_day_start: str = "04:00"
    month_start: str = "00:00"  # the calendar month turns at this local time of its first day
    weekly_cap_period: Literal["calendar_week", "rolling_7_days"] = "calendar_week"
    calendars: list[Calendar] = []
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
    overdraft: Overdraft = Overdraft()

    @field_validator("service_day_start", "month_start")
    @classmethod
    def _day_start(cls, value: str) -> str:
        if minute_of_day(value) >= MINUTES_PER_DAY:
            raise ValueError("must be before 24:00")
        return value

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> FareRules:
        if info.context is _DRAFT:  # validate() runs them itself, with the draft's bookkeeping
            return self
        problems = _Checker(self, Draft({})).run()
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

    @property
    def month_start_min(self) -> int:
        return minute_of_day(self.month_start)


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
    day, minute = divmod(minute_of_week % (7 * MINUTES_PER_DAY), MINUTES_PER_DAY)
    return f"{DAYS[day]} {minute // 60:02d}:{minute % 60:02d}"


def _span(start: int, end: int) -> str:
    """Minutes of the week [start, end) as 'mon 07:30-09:00' (or '-24:00', or 'sun 23:00-mon 01:00')."""
    start_day, end_day = start // MINUTES_PER_DAY, end // MINUTES_PER_DAY
    end_text = _clock(end)
    if end_day == start_day or (end_day == start_day + 1 and end % MINUTES_PER_DAY == 0):
        end_text = end_text[4:] if end_day == start_day else "24:00"
    return f"{_clock(start)}-{end_text}"


def _runs(minutes: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted minutes of the week -> [start, end) runs of consecutive minutes."""
    runs: list[tuple[int, int]] = []
    for minute in minutes:
        if runs and runs[-1][1] == minute:
            runs[-1] = (runs[-1][0], minute + 1)
        else:
            runs.append((minute, minute + 1))
    return runs


T = TypeVar("T")
_DRAFT: dict[str, bool] = {"draft": True}  # validation context: leave the cross-checks to validate()


@dataclass
class Draft:
    """What validated of a rules file, with the bookkeeping to report on it in the file's own terms.

    When pydantic refuses part of a file, the smallest table holding each refused value (a station, an
    edge, a step, a network, a category...) is cut out and the rest validated again. `cuts` are the paths
    cut; `origins` the original indices of the elements each shortened list kept, so a problem found in
    the draft names the element the operator wrote. Checks whose answer a cut element could change
    (reachability over cut edges, coverage by a cut leg rule, references to a cut station's id) are left
    out rather than reported wrongly: they are dependent problems, reported once the cut one is fixed.
    """

    data: dict[str, Any]
    cuts: set[LocPath] = field(default_factory=set)
    origins: dict[LocPath, list[int]] = field(default_factory=dict)
    refused: set[LocPath] = field(default_factory=set)  # the paths pydantic refused

    def numbered(self, path: LocPath, items: Sequence[T]) -> list[tuple[int, T]]:
        """(index in the file, item) for each item of the draft's list at `path`."""
        kept = self.origins.get(path)
        if kept is None or len(kept) != len(items):
            kept = list(range(len(items)))
        return list(zip(kept, items, strict=True))

    def lossy(self, *path: str | int) -> bool:
        """Whether anything at or under `path` was cut out."""
        return any(cut[:len(path)] == path for cut in self.cuts)

    def cut_values(self, list_name: str, key: str) -> set[Any] | None:
        """`key` of each cut element of a top-level list (for example the ids of the stations cut);
        None when a cut element has no readable `key` (it may have been any)."""
        values: set[Any] = set()
        items = self.data.get(list_name)
        for cut in self.cuts:
            if cut[0] != list_name:
                continue
            if len(cut) == 1 or not isinstance(items, list):
                return None
            raw = _child(items, cut[1])
            value = raw.get(key) if isinstance(raw, dict) else None
            if (*cut, key) in self.refused or not isinstance(value, (str, int)) or isinstance(value, bool):
                return None  # the value meant is not known
            values.add(value)
        return values

    def cut_keys(self, table_name: str) -> set[str]:
        return {str(cut[1]) for cut in self.cuts if len(cut) == 2 and cut[0] == table_name}


def _known(names: Iterable[Any], limit: int = 12) -> str:
    names = [str(n) for n in names]
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


class _Checker:
    """Cross-field checks pydantic cannot express; collects every problem with its location."""

    def __init__(self, rules: FareRules, draft: Draft) -> None:
        self.rules = rules
        self.draft = draft
        self.problems: list[Problem] = []
        self.station_network: dict[int, str] = {}
        self.coverage_unsure = False
        self.unsure_edges: set[str] = set()
        # what was written but cut from the draft: referring to it is no error of its own
        stations, bands = draft.cut_values("stations", "id"), draft.cut_values("timeframes", "group")
        self.cut_stations = stations or set()
        self.cut_networks = draft.cut_keys("networks")
        self.cut_categories = draft.cut_keys("rider_categories")
        self.cut_bands = {str(v) for v in bands or ()}
        self.all_cut = {name for name in ("stations", "networks", "rider_categories", "timeframes",
                                          "default_timeframe", "leg_rules") if (name,) in draft.cuts}
        if stations is None:  # a station was cut whose id cannot be read: any id may have been its
            self.all_cut.add("stations")
        if bands is None:
            self.all_cut.add("timeframes")

    def add(self, where: LocPath, why: str, hint: str = "") -> None:
        self.problems.append(Problem(where, why, hint))

    def run(self) -> list[Problem]:
        self.check_counts()
        self.check_stations()
        self.check_edges()
        self.check_timeframes()
        self.check_categories()
        self.check_leg_rules()
        self.check_transfers()
        self.check_time()
        return self.problems

    def numbered(self, path: LocPath, items: Sequence[T]) -> list[tuple[int, T]]:
        return self.draft.numbered(path, items)

    def network_known(self, network: str) -> bool:
        return network in self.rules.networks or network in self.cut_networks or "networks" in self.all_cut

    def check_counts(self) -> None:
        r = self.rules
        if len(r.networks) >= 255:
            self.add(("networks",), f"{len(r.networks)} networks; at most 254")
        if len(r.rider_categories) >= 256:
            self.add(("rider_categories",), f"{len(r.rider_categories)} categories; at most 255")
        if len(r.band_names) >= 256:
            self.add(("timeframes",), f"{len(r.band_names)} time bands; at most 255")

    def check_stations(self) -> None:
        first_seen: dict[int, int] = {}
        for i, station in self.numbered(("stations",), self.rules.stations):
            where: LocPath = ("stations", i)
            if station.id in first_seen:
                self.add((*where, "id"),
                         f"duplicate station id {station.id} (also stations[{first_seen[station.id]}])",
                         "every station needs an id of its own")
                continue
            first_seen[station.id] = i
            if station.network not in self.rules.networks:
                if self.network_known(station.network):
                    self.station_network[station.id] = station.network
                else:
                    self.add((*where, "network"),
                             f"unknown network {station.network!r}{self._known_networks()}")
                continue
            self.station_network[station.id] = station.network
            if len(set(station.lines)) != len(station.lines):
                self.add((*where, "lines"), "duplicate line")
            if station.zones and station.zone is not None:
                self.add((*where, "zones"), "give zone or zones, not both",
                         'zones = ["A", "B"] for a station read in either zone (priced at the cheaper)')
            elif len(set(station.zones)) != len(station.zones):
                self.add((*where, "zones"), "duplicate zone")
        if self.draft.lossy("stations"):
            return  # a station cut from the draft may be the one a network is missing
        used = set(self.station_network.values())
        for network_id in self.rules.networks:
            if network_id not in used:
                self.add(("networks", network_id), "has no stations",
                         f'add stations with network = "{network_id}", or remove the network')

    def station_hint(self, network_id: str) -> str:
        ids = sorted(s for s, n in self.station_network.items() if n == network_id)
        return f"stations of network {network_id!r}: {_known(ids)}" if ids else ""

    def check_edges(self) -> None:
        lines: dict[int, set[str]] = {}
        for written in self.rules.stations:
            lines.setdefault(written.id, set(written.lines))  # a duplicate id is reported as such, not here
        for network_id, network in self.rules.networks.items():
            if network.edges and network.fare_collection == "flat":
                self.add(("networks", network_id, "edges"),
                         "a flat-fare network has no priced track segments",
                         "a flat network is priced by one fare a boarding; remove its edges")
                continue
            seen: dict[frozenset[int], int] = {}
            for i, edge in self.numbered(("networks", network_id, "edges"), network.edges):
                where: LocPath = ("networks", network_id, "edges", i)
                ok = True
                for field_name, station in (("from", edge.from_station), ("to", edge.to_station)):
                    if station not in self.station_network:
                        if station not in self.cut_stations and "stations" not in self.all_cut:
                            self.add((*where, field_name), f"unknown station {station}",
                                     self.station_hint(network_id))
                        ok = False
                    elif self.station_network[station] != network_id:
                        self.add((*where, field_name),
                                 f"station {station} belongs to network {self.station_network[station]!r}",
                                 self.station_hint(network_id))
                        ok = False
                if not ok:
                    self.unsure_edges.add(network_id)  # the segment meant may connect what seems apart
                    continue
                if edge.from_station == edge.to_station:
                    self.add(where, f"a segment from station {edge.from_station} to itself")
                    continue
                key = frozenset((edge.from_station, edge.to_station))
                if key in seen:
                    self.add(where, f"duplicate segment {edge.from_station}-{edge.to_station} "
                                    f"(also networks.{network_id}.edges[{seen[key]}])",
                             "a segment serves both directions; give each pair of neighbours once")
                seen[key] = i
                if edge.line is not None:
                    for station in (edge.from_station, edge.to_station):
                        if edge.line not in lines.get(station, set()):
                            self.add((*where, "line"), f"station {station} is not on line {edge.line!r}")

    def check_timeframes(self) -> None:
        r = self.rules
        owner: dict[int, int] = {}
        frames = dict(self.numbered(("timeframes",), r.timeframes))
        for i, frame in frames.items():
            where: LocPath = ("timeframes", i)
            if frame.group == r.default_timeframe:
                self.add((*where, "group"), f"{frame.group!r} is the default_timeframe; it needs no rows")
                continue
            if len(set(frame.days)) != len(frame.days):
                self.add((*where, "days"), "duplicate day")
                continue
            if frame.start_min == frame.end_min:
                self.add((*where, "end"), "must differ from start",
                         "a timeframe is [start, end); an end before the start runs past midnight")
                continue
            if frame.start_min == MINUTES_PER_DAY:
                self.add((*where, "start"), "must be before 24:00", TIME_HINT)
                continue
            length = frame.end_min + MINUTES_PER_DAY - frame.start_min
            if frame.end_min < frame.start_min and length > 12 * 60:
                self.problems.append(Problem(
                    (*where, "end"), f"ends before it starts, so it runs past midnight: {frame.start} to "
                                     f"{frame.end} the next day, {length // 60} h {length % 60:02d} min",
                    f"an end before the start is read as overnight; if {frame.end} was meant the same day, "
                    f"it must come after {frame.start}", "warning"))
            clash: dict[int, list[int]] = defaultdict(list)  # other timeframe -> minutes both cover
            for minute in timeframe_minutes(frame):
                other = owner.setdefault(minute, i)
                if other != i:
                    clash[other].append(minute)
            for other, minutes in clash.items():
                runs = _runs(sorted(minutes))
                spans = ", ".join(_span(a, b) for a, b in runs[:3]) + (", ..." if len(runs) > 3 else "")
                if frames[other].group != frame.group:
                    self.add(where, f"overlaps timeframes[{other}] ({frames[other].group!r}) at {spans}",
                             "a minute belongs to one time band: shorten one of them "
                             "(an end before the start runs past midnight)")
                    break
                self.problems.append(Problem(
                    where, f"overlaps timeframes[{other}] of the same group {frame.group!r} at {spans} "
                           f"(harmless: those minutes are {frame.group!r} either way)",
                    "merge the two rows or shorten one, if the overlap was not meant", "warning"))
        if r.default_timeframe is None and not self.draft.lossy("timeframes"):
            if not r.timeframes:
                self.add(("timeframes",), "no timeframes and no default_timeframe: no time band at all")
            else:
                runs = _runs(m for m in range(7 * MINUTES_PER_DAY) if m not in owner)
                if runs:
                    spans = ", ".join(_span(a, b) for a, b in runs[:3]) + (", ..." if len(runs) > 3 else "")
                    self.add(("timeframes",), f"{_clock(runs[0][0])} is in no timeframe and "
                                              f"default_timeframe is not set (uncovered: {spans})",
                             'set default_timeframe = "offpeak" for every minute no timeframe covers')

    def check_categories(self) -> None:
        for category_id, category in self.rules.rider_categories.items():
            where: LocPath = ("rider_categories", category_id)
            kinds = [k for k, v in (("percent_off", category.percent_off), ("fen_off", category.fen_off),
                                    ("free", category.free or None)) if v is not None]
            if len(kinds) > 1:
                self.add(where, f"give at most one discount kind, not {' and '.join(kinds)}")
            if category.monthly_percent_off and not category.monthly_threshold_fen:
                self.add((*where, "monthly_threshold_fen"), "must be > 0 when monthly_percent_off is set",
                         f"the fen spent in a month before the discount applies; {MONEY_HINT}")
            self.check_network_list((*where, "discount_networks"), category.discount_networks)
            if category.monthly is not None:
                if category.monthly_threshold_fen or category.monthly_percent_off:
                    self.add((*where, "monthly"),
                             "give monthly or monthly_threshold_fen/monthly_percent_off, not both",
                             "a one-threshold scheme is one tier of monthly")
                self.check_scheme((*where, "monthly"), category.monthly)
        known = self.rules.rider_categories
        for i, name in enumerate(self.rules.min_entry_categories or []):
            where = ("min_entry_categories", i)
            if name not in known:
                if name not in self.cut_categories:
                    self.add(where, f"unknown rider category {name!r} (known: {', '.join(known)})")
            elif name in (self.rules.min_entry_categories or [])[:i]:
                self.add(where, f"{name!r} is listed twice")

    def check_network_list(self, where: LocPath, names: list[str] | None) -> None:
        for j, name in enumerate(names or []):
            if not self.network_known(name):
                self.add((*where, j), f"unknown network {name!r}{self._known_networks()}")
            elif name in (names or [])[:j]:
                self.add((*where, j), f"{name!r} is listed twice")

    def check_scheme(self, where: LocPath, scheme: MonthlyScheme) -> None:
        """Tiers state their count in the basis' unit and rise; the networks named are known."""
        key, other = ("from_fen", "from_rides") if scheme.basis == "spend" else ("from_rides", "from_fen")
        previous: int | None = None
        for j, tier in enumerate(scheme.tiers):
            at: LocPath = (*where, "tiers", j)
            value = getattr(tier, key)
            if getattr(tier, other) is not None:
                self.add((*at, other), f"a {scheme.basis!r} scheme counts with {key}, not {other}",
                         f'basis = "{scheme.basis}": each tier gives {key}')
            if value is None:
                self.add(at, f"{key} is required in a {scheme.basis!r} scheme",
                         "e.g. { from_fen = 10000, percent_off = 20 }: 20% off once ¥100 is spent"
                         if key == "from_fen" else
                         "e.g. { from_rides = 15, percent_off = 40 }: 40% off once 15 rides are taken")
                break
            if previous is not None and value <= previous:
                self.add((*at, key), f"{value} must be above the previous tier's {previous}",
                         "tiers are listed in rising order of the month's count")
                break
            previous = value
        self.check_network_list((*where, "counted_networks"), scheme.counted_networks)
        self.check_network_list((*where, "discounted_networks"), scheme.discounted_networks)

    def check_time(self) -> None:
        """The time zone, the compiled range, calendars and the overdraft's taps."""
        r = self.rules
        if r.time_zone is not None:
            if "utc_offset_min" in r.model_fields_set:
                self.add(("utc_offset_min",), "give time_zone or utc_offset_min, not both",
                         "the time zone states the offset, summer time included")
            try:
                zoneinfo.ZoneInfo(r.time_zone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                self.add(("time_zone",), f"unknown time zone {r.time_zone!r}",
                         "an IANA name such as Asia/Shanghai, Europe/London or America/Toronto")
        if parse_date(r.valid_from) >= parse_date(r.valid_until):
            self.add(("valid_until",), f"{r.valid_until} must come after valid_from {r.valid_from}")
        seen: dict[str, int] = {}
        for i, calendar in self.numbered(("calendars",), r.calendars):
            for j, day in enumerate(calendar.dates):
                if day in seen:
                    self.add(("calendars", i, "dates", j), f"{day} is also in calendars[{seen[day]}]",
                             "a date is priced as one weekday")
                seen.setdefault(day, i)
        if len(set(r.overdraft.taps)) != len(r.overdraft.taps):
            self.add(("overdraft", "taps"), "a tap kind is listed twice")

    def check_leg_rules(self) -> None:
        r = self.rules
        bands = r.band_names
        base: dict[tuple[str, str | None, str | None], int] = {}  # (network, timeframe, category) -> index
        od: dict[tuple[str, str | None, str | None], dict[tuple[int, int], int]] = defaultdict(dict)
        rules_by_index: dict[int, LegRule] = {}
        for i, rule in self.numbered(("leg_rules",), r.leg_rules):
            where: LocPath = ("leg_rules", i)
            rules_by_index[i] = rule
            network = r.networks.get(rule.network)
            if network is None or (rule.timeframe is not None and rule.timeframe not in bands) or (
                    rule.rider_category is not None and rule.rider_category not in r.rider_categories):
                self.coverage_unsure = True  # the rule was meant to price something; which, is not known
            if network is None:
                if not self.network_known(rule.network):
                    self.add((*where, "network"), f"unknown network {rule.network!r}{self._known_networks()}")
                continue
            if rule.timeframe is not None and rule.timeframe not in bands:
                bands_cut = {"timeframes", "default_timeframe"} & self.all_cut
                if rule.timeframe not in self.cut_bands and not bands_cut:
                    self.add((*where, "timeframe"),
                             f"unknown timeframe {rule.timeframe!r} (known: {', '.join(bands)})")
                continue
            if rule.rider_category is not None and rule.rider_category not in r.rider_categories:
                if rule.rider_category not in self.cut_categories and "rider_categories" not in self.all_cut:
                    self.add((*where, "rider_category"), f"unknown rider category {rule.rider_category!r} "
                                                         f"(known: {', '.join(r.rider_categories)})")
                continue
            flat = network.fare_collection == "flat"
            if flat != isinstance(rule, FlatLegRule):
                self.add((*where, "kind"), f"a {rule.kind!r} rule cannot price {network.fare_collection} "
                                           f"network {rule.network!r}",
                         'a flat network takes kind = "flat"; an entry/exit network distance, zones or od')
                continue
            key = (rule.network, rule.timeframe, rule.rider_category)
            if isinstance(rule, OdLegRule):
                self.check_od(where, rule, od[key])
                continue
            if key in base:
                self.add(where, f"duplicates leg_rules[{base[key]}] (network {rule.network!r}, "
                                f"timeframe {rule.timeframe or 'all'}, rider category "
                                f"{rule.rider_category or 'all'})",
                         "one rule per network, timeframe and rider category; od rules add to it")
                continue
            base[key] = i
            if isinstance(rule, DistanceLegRule):
                if not self.draft.lossy(*where, "steps"):
                    self.check_distance(where, rule)
            elif isinstance(rule, ZoneLegRule):
                self.check_zones(where, rule)
        # The adult price (rules without a rider category) must cover everything; category rules refine it.
        self.check_coverage({k[:2]: v for k, v in base.items() if k[2] is None},
                            {k[:2]: v for k, v in od.items() if k[2] is None}, rules_by_index)

    def check_distance(self, where: LocPath, rule: DistanceLegRule) -> None:
        """The steps' ranges follow on from the base: (base_up_to_m, up_to_m], (up_to_m, next], ...

        Only upper limits are written, so the ranges cannot leave a gap between them; they overlap when a
        limit does not rise, and leave the distances beyond the last limit unpriced without an
        open-ended step or a max_fen. Both are named with their ends."""
        lower = rule.base_up_to_m
        ranges = f"the base covers 0..{lower} m"
        for j, step in enumerate(rule.steps):
            if step.up_to_m is None:
                if j != len(rule.steps) - 1:
                    self.add((*where, "steps", j, "up_to_m"), "only the last step may be open-ended",
                             f"steps[{j}] covers every distance beyond {lower} m, so steps[{j + 1}] and "
                             f"later would never apply; give steps[{j}] an up_to_m")
                return
            if step.up_to_m <= lower:
                self.add((*where, "steps", j, "up_to_m"),
                         f"{step.up_to_m} must be greater than the previous limit {lower} "
                         f"({ranges}; steps[{j}] would cover {lower}..{step.up_to_m} m, which overlaps it)",
                         "each step covers from the previous limit up to its own up_to_m, so limits rise")
                return
            ranges = f"steps[{j}] covers {lower}..{step.up_to_m} m"
            lower = step.up_to_m
        if rule.max_fen is None:
            self.add((*where, "steps"), f"distances beyond {lower} m have no fare: end with an open-ended "
                                        f"step (no up_to_m) or set max_fen",
                     f"{lower}..∞ m is uncovered; e.g. {{ every_m = 8000, add_fen = 100 }} as the last step")

    def check_zones(self, where: LocPath, rule: ZoneLegRule) -> None:
        n = len(rule.zones)
        if len(set(rule.zones)) != n:
            self.add((*where, "zones"), "duplicate zone")
        if len(rule.matrix) != n:
            self.add((*where, "matrix"), f"{len(rule.matrix)} rows for {n} zones",
                     "matrix[from zone][to zone], one row and one column per zone, in the order of zones")
        for j, row in enumerate(rule.matrix):
            if len(row) != n:
                self.add((*where, "matrix", j), f"{len(row)} columns for {n} zones")
        for k, station in self.numbered(("stations",), self.rules.stations):
            if station.network != rule.network:
                continue
            names = station.zone_names
            unknown = [z for z in names if z not in rule.zones]
            if not names or unknown:
                key = "zones" if station.zones else "zone"
                written = unknown[0] if unknown else None
                self.add(("stations", k, key), f"{written!r} is not a zone of "
                                               f"{format_path(where)} ({', '.join(rule.zones)})")

    def check_od(self, where: LocPath, rule: OdLegRule, pairs: dict[tuple[int, int], int]) -> None:
        for j, pair in self.numbered((*where, "pairs"), rule.pairs):
            ok = True
            for field_name, station in (("from", pair.from_station), ("to", pair.to_station)):
                if self.station_network.get(station) != rule.network:
                    if station not in self.cut_stations and "stations" not in self.all_cut:
                        self.add((*where, "pairs", j, field_name),
                                 f"station {station} is not a station of network {rule.network!r}",
                                 self.station_hint(rule.network))
                    ok = False
            if not ok:
                continue
            keys = [(pair.from_station, pair.to_station)]
            if pair.both_ways and pair.from_station != pair.to_station:
                keys.append((pair.to_station, pair.from_station))
            for key in keys:
                if key in pairs:
                    self.add((*where, "pairs", j), f"fare {key[0]}->{key[1]} given twice",
                             "a pair is both ways unless both_ways = false")
                    break
                pairs[key] = j

    def uncertain_networks(self) -> set[str] | None:
        """Networks whose coverage a cut leg rule (or a cut part of one) might have changed; None: all."""
        if ("leg_rules",) in self.draft.cuts:
            return None
        items = self.draft.data.get("leg_rules")
        networks: set[str] = set()
        for cut in self.draft.cuts:
            if cut[0] == "leg_rules" and isinstance(items, list) and isinstance(cut[1], int):
                raw = items[cut[1]] if cut[1] < len(items) else None
                if not isinstance(raw, dict) or not isinstance(raw.get("network"), str):
                    return None
                networks.add(raw["network"])
        return networks

    def check_coverage(self, base: dict[tuple[str, str | None], int],
                       od: dict[tuple[str, str | None], dict[tuple[int, int], int]],
                       rules_by_index: dict[int, LegRule]) -> None:
        """Every band of every network has a fare, and every OD pair a distance or an explicit fare."""
        r = self.rules
        uncertain = self.uncertain_networks()
        if uncertain is None or self.coverage_unsure:
            return
        if {"stations", "timeframes", "default_timeframe"} & self.all_cut:
            return
        for network_id, network in r.networks.items():
            if network_id in uncertain:
                continue
            stations = [s for s, n in self.station_network.items() if n == network_id]
            for band in r.band_names:
                key = (network_id, band) if (network_id, band) in base else (network_id, None)
                rule_index = base.get(key)
                if network.fare_collection == "flat":
                    if rule_index is None:
                        self.add(("leg_rules",),
                                 f"flat network {network_id!r} has no fare in timeframe {band!r}",
                                 f'add a leg rule: kind = "flat", network = "{network_id}", without a '
                                 f"timeframe for every band")
                    continue
                explicit = set(od.get((network_id, band), {})) | set(od.get((network_id, None), {}))
                if r.paid_area.same_station_window_min:  # the same-station fare prices what od leaves out
                    explicit |= {(a, a) for a in stations}
                rule = None if rule_index is None else rules_by_index[rule_index]
                if isinstance(rule, DistanceLegRule) and (self.draft.lossy("networks", network_id)
                                                          or network_id in self.unsure_edges):
                    continue  # a cut segment may be the one that connects them
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
                    self.add(("leg_rules",),
                             f"network {network_id!r} has no fare in timeframe {band!r} for "
                             f"{missing[0]}->{missing[1]} (add a distance, zones or od rule)")
                else:
                    self.add(("networks", network_id, "edges"),
                             f"disconnected: station {missing[1]} is unreachable from station {missing[0]} "
                             f"(needed by leg_rules[{rule_index}]; add a segment or an od fare)")

    def check_transfers(self) -> None:
        seen: dict[tuple[str, str], int] = {}
        for i, rule in self.numbered(("transfer_rules",), self.rules.transfer_rules):
            where: LocPath = ("transfer_rules", i)
            ok = True
            for field_name in ("from_network", "to_network"):
                value = getattr(rule, field_name)
                if value not in self.rules.networks:
                    if not self.network_known(value):
                        self.add((*where, field_name), f"unknown network {value!r}{self._known_networks()}")
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
_LEG_KINDS = ("distance", "zones", "flat", "od")


def _path_of(loc: tuple[int | str, ...]) -> LocPath:
    """pydantic's error location as the file's path: the union member pydantic names is left out (the
    operator wrote `kind = ...` already)."""
    if len(loc) > 2 and loc[0] == "leg_rules" and loc[2] in _LEG_KINDS:
        return (*loc[:2], *loc[3:])
    return tuple(loc)


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


def _strip(tp: Any, raw: Any) -> Any:
    """Annotated[X, ...] -> X; X | None -> X; the leg-rule union -> the member `raw`'s kind names."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
            kind = raw.get("kind") if isinstance(raw, dict) else None
            chosen = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)
                      and kind in typing.get_args(_strip(m.model_fields["kind"].annotation, None)
                                                  if "kind" in m.model_fields else ())]
            if chosen:
                return chosen[0]
            tables = all(isinstance(m, type) and issubclass(m, BaseModel) for m in members)
            return BaseModel if tables else None  # a table of an unknown kind: no fields known
        else:
            return tp


def _fields_at(path: LocPath, data: Any) -> list[str] | None:
    """The field names the model at `path` accepts (aliases as written), for a misspelt key's hint."""
    tp: Any = FareRules
    raw = data
    for item in path:
        tp = _strip(tp, raw)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = {f.alias or name: f.annotation for name, f in tp.model_fields.items()}
            tp = fields.get(str(item))
        elif typing.get_origin(tp) in (list, dict):
            tp = typing.get_args(tp)[-1]
        else:
            return None
        raw = _child(raw, item)
    tp = _strip(tp, raw)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or name for name, f in tp.model_fields.items()]
    return None


def _child(node: Any, item: str | int) -> Any:
    """node[item] of parsed data, or None where there is no such thing."""
    if isinstance(node, dict):
        return node.get(item)
    if isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node):
        return node[item]
    return None


def _hint(path: LocPath, error: Any, data: Any) -> str:
    """What to write instead, for the kinds of value operators get wrong."""
    kind = error["type"]
    name = next((str(p) for p in reversed(path) if isinstance(p, str)), "")
    value = error.get("input")
    if kind == "extra_forbidden":
        fields = _fields_at(path[:-1], data) or []
        close = difflib.get_close_matches(str(path[-1]), fields, n=1, cutoff=0.6)
        if close:
            return f"did you mean {close[0]!r}?"
        return f"fields here: {_known(fields, 20)}" if fields else ""
    if name == "days" or (len(path) > 1 and path[-2] == "days"):
        return "days are written mon, tue, wed, thu, fri, sat, sun"
    if kind in ("union_tag_invalid", "union_tag_not_found", "missing", "literal_error"):
        return ""
    if name.endswith("_fen"):
        if isinstance(value, float) and value == value and abs(value) < 1e9:
            return f"{MONEY_HINT}; if {value:g} is yuan, write {round(value * 100)}"
        return MONEY_HINT
    if name.endswith("_m"):
        if isinstance(value, float) and value == value and 0 < abs(value) < 1000:
            return f"{METRES_HINT}; if {value:g} is km, write {round(value * 1000)}"
        return METRES_HINT
    if name == "utc_offset_min":
        return "minutes east of UTC, an integer; UTC+8 is 480, UTC-5 is -300"
    if name.endswith("_min"):
        return MINUTES_HINT
    if name in ("start", "end", "service_day_start"):
        return TIME_HINT
    if name.endswith("percent_off") or name == "discount_percent":
        return "a whole number of percent, 0..100"
    if name in ("id", "from", "to"):
        return "station ids are integers 1..65535"
    if kind == "bool_type":
        return "true or false, without quotes"
    return ""


def _from_errors(exc: ValidationError, data: Any) -> list[Problem]:
    problems = []
    for error in exc.errors():
        path = _path_of(error["loc"])
        problems.append(Problem(path, _why(error), _hint(path, error, data)))
    return problems


def _cut_point(data: dict[str, Any], path: LocPath) -> LocPath:
    """The smallest table holding a refused value (by the rules' types, whatever was written there): an
    element of a list of tables, a network, a category, paid_area; else the top-level field itself."""
    for end in range(len(path), 1, -1):
        if _fields_at(path[:end], data) is not None:
            return path[:end]
    return path[:1]


def _without(node: Any, path: LocPath, cuts: set[LocPath], origins: dict[LocPath, list[int]]) -> Any:
    if isinstance(node, dict):
        return {k: _without(v, (*path, k), cuts, origins) for k, v in node.items() if (*path, k) not in cuts}
    if isinstance(node, list):
        kept = [i for i in range(len(node)) if (*path, i) not in cuts]
        if len(kept) != len(node):
            origins[path] = kept
        return [_without(node[i], (*path, i), cuts, origins) for i in kept]
    return node


@cache
def _field_adapter(name: str) -> TypeAdapter[Any]:
    """The field's type without its length limits (a draft may hold no stations at all)."""
    annotation = FareRules.model_fields[name].annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return TypeAdapter(annotation)
    return TypeAdapter(annotation, config=ConfigDict(strict=True))


def _as_written(path: LocPath, origins: dict[LocPath, list[int]]) -> LocPath:
    """A path in the draft -> the same place in the file (indices as the operator wrote them)."""
    out: LocPath = ()
    for item in path:
        if isinstance(item, int) and out in origins and item < len(origins[out]):
            item = origins[out][item]
        out = (*out, item)
    return out


def _draft_of(data: dict[str, Any], refused: Iterable[LocPath]) -> tuple[FareRules, Draft]:
    """The rules without what pydantic refused, built without the cross-checks (see Draft).

    Cutting can make a table invalid in turn (an od rule whose only pair was cut has no pairs), so the
    cutting repeats, a level up each time, until every field validates; a field that still does not is
    left at its default, or empty."""
    refused = set(refused)
    cuts = {_cut_point(data, path) for path in refused if path}
    for _ in range(8):
        origins: dict[LocPath, list[int]] = {}
        kept = _without(data, (), cuts, origins)
        values: dict[str, Any] = {}
        more: set[LocPath] = set()
        for name in FareRules.model_fields:
            if name in kept:
                try:
                    values[name] = _field_adapter(name).validate_python(kept[name])
                except ValidationError as exc:
                    more |= {_cut_point(data, _as_written(_path_of((name, *e["loc"])), origins))
                             for e in exc.errors()}
        if not more - cuts:
            break
        cuts |= more
    for name, info in FareRules.model_fields.items():
        if name in values:
            continue
        if name in kept:  # written, but not valid even cut down
            cuts.add((name,))
            origins = {path: indices for path, indices in origins.items() if path[:1] != (name,)}
        if info.is_required():
            origin = typing.get_origin(info.annotation)
            values[name] = {} if origin is dict else [] if origin is list else "?"
        else:
            values[name] = info.get_default(call_default_factory=True)
    return FareRules.model_construct(**values), Draft(data, cuts, origins, refused)


@dataclass
class Outcome:
    """What validating a rules file found: the rules (None when any error), every problem (errors and
    warnings, unlocated), and the draft the checks ran on."""

    rules: FareRules | None
    problems: list[Problem]
    draft_rules: FareRules | None
    draft: Draft

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


Advisor = Callable[["FareRules", Draft], list[Problem]]  # more checks run on the rules or the draft


def validate(data: Any, advise: Advisor | None = None) -> Outcome:
    """Validate parsed rules in one pass: pydantic's field checks, then the cross-checks, on a draft of
    what validated when some field did not, so N independent mistakes are N problems reported at once."""
    if not isinstance(data, dict):
        problem = Problem((), f"the rules must be a table/object, not {type(data).__name__}")
        return Outcome(None, [problem], None, Draft({}))
    try:
        rules = FareRules.model_validate(data, context=_DRAFT)
        problems: list[Problem] = []
        draft = Draft(data)
    except ValidationError as exc:
        problems = _from_errors(exc, data)
        rules, draft = _draft_of(data, [p.path for p in problems])
    refused = {p.path for p in problems}
    problems += [p for p in _Checker(rules, draft).run() if p.path not in refused]
    if advise is not None:  # fare_core.rules_advice.advise: warnings on values that look like slips
        problems += [p for p in advise(rules, draft) if p.path not in refused]
    errors = any(p.severity == "error" for p in problems)
    return Outcome(None if errors else rules, problems, rules, draft)


def rules_from_data(data: Any) -> FareRules:
    """Validate already-parsed data (a dict from TOML or JSON); raise RulesError listing every problem."""
    outcome = validate(data)
    if outcome.rules is None:
        raise RulesError(outcome.problems)
    return outcome.rules


def read_text(text: str, fmt: Literal["toml", "json"]) -> Any:
    """TOML or JSON text -> parsed data; RulesError (with the line and column) if it does not parse."""
    if fmt == "toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            match = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
            line, column = (int(match[1]), int(match[2])) if match else (None, None)
            raise RulesError([Problem((), f"not valid TOML: {exc}", line=line, column=column)]) from None
    if fmt == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            problem = Problem((), f"not valid JSON: {exc}", line=exc.lineno, column=exc.colno)
            raise RulesError([problem]) from None
    raise RulesError([Problem((), f"unknown rules format {fmt!r} (toml or json)")])


def validate_text(text: str, fmt: Literal["toml", "json"], advise: Advisor | None = None) -> Outcome:
    """Parse and validate; every problem located at its line and column in `text`, sorted by line."""
    outcome = validate(read_text(text, fmt), advise)
    if outcome.problems:  # the text is scanned for positions only when there is something to locate
        source = SourceMap(text, fmt)
        outcome.problems = sorted((p.located(source) for p in outcome.problems), key=Problem.sort_key)
    return outcome


def parse_rules(text: str, fmt: Literal["toml", "json"]) -> FareRules:
    """Parse and validate rules written as TOML or JSON text; RulesError lists every error, located."""
    outcome = validate_text(text, fmt)
    if outcome.rules is None:
        raise RulesError(outcome.problems)
    return outcome.rules


def read_file(path: str | Path) -> tuple[str, Literal["toml", "json"]]:
    """A rules file's text and format (by its suffix); RulesError if it cannot be read."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        why = f"{path}: rules files end in .toml or .json, not {suffix or 'nothing'!r}"
        raise RulesError([Problem((), why)])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError([Problem((), f"{path}: cannot read: {exc}")]) from None
    return text, "toml" if suffix == ".toml" else "json"


def load_rules(path: str | Path) -> FareRules:
    """Read rules from a .toml or .json file."""
    return parse_rules(*read_file(path))
