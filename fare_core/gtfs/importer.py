"""GTFS-Fares v2 -> FareRules, with every fact the gate cannot enforce listed by file and line.

How a feed maps (the reverse of rules.py's table):
- networks.txt / routes.network_id / route_networks.txt -> networks. A network whose fare_leg_rules name
  areas is priced entry to exit by zones ("entry_exit"); one priced without areas is "flat" (tap on).
- agency.txt agency_timezone -> time_zone (its summer time is compiled into the table).
- areas.txt + stop_areas.txt -> stations of the area-priced networks, one a stop, `zone` = its area
  (`zones` = its areas for a stop in several, priced at the cheapest reading);
  stops.txt gives the name, and the GTFS stop id rides in the name ("Czarna [100]") so that
  `faregate fares show --from 100` finds it. A numeric stop id that fits 16 bits is the station id;
  other stops get the lowest free ids in file order. A flat network gets one station a route (a bus
  reader), named from routes.txt.
- timeframes.txt (+ calendar.txt for service_id) -> timeframes on the service's weekdays, one group a
  band; minutes no timeframe covers are the band "outside_timeframes" (a feed without timeframes has the
  one band "all_times"); when they cover the whole week the first group is the default band. Groups
  told apart only by dates cannot share a minute of the week: the first row keeps it.
- rider_categories.txt -> rider_categories, the default category first; a product's price for the default
  category (or for no category) is the base fare, a product for another category a rule of its own.
- fare_products.txt amounts -> integer minor units of the feed's currency (fen for CNY).
- fare_leg_rules.txt -> one "zones" rule (or "flat" rule) per network, timeframe and rider category;
  from/to areas left empty match every area no more specific row names; rule_priority is honoured.
- fare_transfer_rules.txt -> transfer_rules where the discount does not depend on the legs' fares.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fare_core.gtfs.feed import Feed, Row
from fare_core.gtfs.money import to_minor
from fare_core.rules import DAYS, MINUTES_PER_DAY, FareRules, RulesError, rules_from_data

DEFAULT_CATEGORY = "all"  # the category of a feed without rider_categories.txt
DEFAULT_NETWORK = "default"  # the network of a feed that names none
OUTSIDE_TIMEFRAMES = "outside_timeframes"  # the default band of a feed whose timeframes leave gaps
ALL_TIMES = "all_times"  # the only band of a feed without timeframes
WHOLE_DAY_MIN = MINUTES_PER_DAY  # a transfer with no time limit: the gate needs one, a service day
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MODES = {"0": "tram", "1": "metro", "2": "rail", "3": "bus", "4": "ferry"}
# Which sale of a product the gate charges when a feed lists several media: a phone is a transit card
# (type 2) or an app (4) before a contactless bank card (3), paper (1) and cash on board (0).
_MEDIA_PREFERENCE = {"": 0, "2": 1, "4": 2, "3": 3, "1": 4, "0": 5}
_MAX_STATION_ID = 0xFFFF


class GtfsImportError(ValueError):
    """The feed's fare files contradict themselves; `problems` are 'file:line: why' lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class ImportResult:
    rules: FareRules
    data: dict[str, Any]  # the rules as plain data, what toml_out writes
    currency: str
    not_enforceable: list[str] = field(default_factory=list)  # 'file:line: what, and what the gate does'
    notes: list[str] = field(default_factory=list)  # how things were mapped, nothing lost


@dataclass(frozen=True)
class _Price:
    minor: int
    row: Row


@dataclass(frozen=True)
class _LegRow:
    row: Row
    group: str
    network: str
    from_area: str
    to_area: str
    timeframe: str
    product: str
    priority: int


def import_gtfs(feed: Feed) -> ImportResult:
    """Map a feed's GTFS-Fares v2 files to validated FareRules; GtfsImportError listing every problem."""
    return _Importer(feed).run()


class _Importer:
    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self.errors: list[str] = []
        self.lost: list[str] = []
        self.notes: list[str] = []
        self.currency = ""

    def error(self, row: Row, why: str) -> None:
        self.errors.append(f"{row.where}: {why}")

    def unenforceable(self, where: str, why: str) -> None:
        self.lost.append(f"{where}: {why}")

    # --- reading the tables ---

    def run(self) -> ImportResult:
        f = self.feed
        self.stops = self._by_id("stops.txt", "stop_id")
        self.routes = self._by_id("routes.txt", "route_id")
        self.calendar = self._by_id("calendar.txt", "service_id")
        self.read_networks()
        self.read_areas()
        self.read_categories()
        self.read_products()
        self.read_leg_rules()
        if self.errors:
            raise GtfsImportError(self.errors)
        data: dict[str, Any] = {"name": self.feed_name(), **self.time_zone()}
        timeframes = self.build_timeframes()
        networks, stations, leg_rules = self.build_networks(timeframes)
        data["networks"] = networks
        data["stations"] = stations
        data["rider_categories"] = self.build_categories()
        data["timeframes"] = timeframes
        data["default_timeframe"] = self.default_band
        data["leg_rules"] = leg_rules
        transfers, max_transfers = self.build_transfers()
        data["transfer_rules"] = transfers
        if max_transfers is not None:
            data["max_transfers"] = max_transfers
        self.report_join_rules()
        self.report_unused_products()
        if f.rows("calendar_dates.txt"):
            used = {t["_service"] for t in timeframes if t.get("_service")}
            for row in f.rows("calendar_dates.txt"):
                if row.get("service_id") in used:
                    self.unenforceable(
                        row.where,
                        f"service {row.get('service_id')!r} "
                        f"{'added' if row.get('exception_type') == '1' else 'removed'} on "
                        f"{row.get('date')}: timeframes follow weekdays, not dates",
                    )
        for frame in timeframes:
            frame.pop("_service", None)
        if self.errors:
            raise GtfsImportError(self.errors)
        data = {k: v for k, v in data.items() if v is not None}
        try:
            rules = rules_from_data(data)
        except RulesError as exc:
            raise GtfsImportError(
                [
                    f"imported rules: {where}: {why}" if where else f"imported rules: {why}"
                    for where, why in exc.problems
                ]
            ) from None
        return ImportResult(rules, data, self.currency, self.lost, self.notes)

    def _by_id(self, name: str, column: str) -> dict[str, Row]:
        result: dict[str, Row] = {}
        for row in self.feed.rows(name):
            key = row.get(column)
            if not key:
                self.error(row, f"{column} is empty")
            elif key in result:
                self.error(row, f"duplicate {column} {key!r} (also line {result[key].line})")
            else:
                result[key] = row
        return result

    def feed_name(self) -> str:
        for name, column in (("agency.txt", "agency_name"), ("feed_info.txt", "feed_publisher_name")):
            rows = self.feed.rows(name)
            if rows and rows[0].get(column):
                return rows[0].get(column)[:100]
        return "GTFS feed"

    def time_zone(self) -> dict[str, Any]:
        """The rules' time: agency_timezone itself, whose summer time the compiler turns into offset
        changes (time_zone), or the default offset when the feed names none."""
        agencies = self.feed.rows("agency.txt")
        if not agencies or not agencies[0].get("agency_timezone"):
            self.notes.append("agency.txt: no agency_timezone; the table keeps the default UTC offset +08:00")
            return {"utc_offset_min": 480}
        row = agencies[0]
        name = row.get("agency_timezone")
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            self.error(row, f"unknown agency_timezone {name!r}")
            return {"utc_offset_min": 480}
        offsets = []
        for month in (1, 7):
            delta = datetime(2026, month, 15, 12, tzinfo=zone).utcoffset()
            offsets.append(0 if delta is None else int(delta.total_seconds()) // 60)
        if max(offsets) != min(offsets):
            self.notes.append(
                f"{row.where}: time zone {name} keeps summer time (UTC{_hm(max(offsets))}); the table "
                f"follows it (time_zone = {name!r}, its changes compiled for valid_from..valid_until)")
        return {"time_zone": name}

    def read_networks(self) -> None:
        self.networks: dict[str, str] = {}
        self.route_network: dict[str, str] = {}
        for row in self.feed.rows("networks.txt"):
            nid = row.get("network_id")
            if not nid:
                self.error(row, "network_id is empty")
            elif nid in self.networks:
                self.error(row, f"duplicate network_id {nid!r}")
            else:
                self.networks[nid] = row.get("network_name")
        for route_id, row in self.routes.items():
            nid = row.get("network_id")
            if nid:
                self.networks.setdefault(nid, "")
                self.route_network[route_id] = nid
        for row in self.feed.rows("route_networks.txt"):
            nid, route_id = row.get("network_id"), row.get("route_id")
            if nid not in self.networks and self.feed.has("networks.txt"):
                self.error(row, f"unknown network_id {nid!r}")
                continue
            self.networks.setdefault(nid, "")
            if route_id not in self.routes:
                self.error(row, f"unknown route_id {route_id!r}")
            else:
                self.route_network[route_id] = nid

    def read_areas(self) -> None:
        self.areas: dict[str, str] = {}
        for row in self.feed.rows("areas.txt"):
            aid = row.get("area_id")
            if not aid:
                self.error(row, "area_id is empty")
            elif len(aid) > 100:
                self.error(row, f"area_id {aid[:20]!r}... is longer than 100 characters")
            else:
                self.areas[aid] = row.get("area_name")
        self.stop_areas: dict[str, list[tuple[str, Row]]] = defaultdict(list)  # stop -> its areas
        self.area_stops: dict[str, list[str]] = defaultdict(list)
        for row in self.feed.rows("stop_areas.txt"):
            aid, stop = row.get("area_id"), row.get("stop_id")
            if aid not in self.areas:
                self.error(row, f"unknown area_id {aid!r}")
            elif stop not in self.stops:
                self.error(row, f"unknown stop_id {stop!r}")
            else:
                self.stop_areas[stop].append((aid, row))
                self.area_stops[aid].append(stop)

    def read_categories(self) -> None:
        self.category_names: dict[str, str] = {}
        self.default_category: str | None = None
        rows = self.feed.rows("rider_categories.txt")
        for row in rows:
            cid = row.get("rider_category_id")
            if not cid or len(cid) > 100:
                self.error(row, "rider_category_id must be 1 to 100 characters")
                continue
            self.category_names[cid] = row.get("rider_category_name")
            if row.get("is_default_fare_category") == "1":
                if self.default_category is not None:
                    self.error(row, f"a second default rider category ({self.default_category!r} is one)")
                self.default_category = cid
        if not rows:
            self.category_names = {DEFAULT_CATEGORY: "All riders"}
            self.default_category = DEFAULT_CATEGORY
        elif self.default_category is None:
            self.default_category = next(iter(self.category_names), None)
            if self.default_category is not None:
                self.notes.append(
                    f"rider_categories.txt: no is_default_fare_category; "
                    f"{self.default_category!r} (the first) is taken as the default"
                )

    def read_products(self) -> None:
        media = {row.get("fare_media_id"): row for row in self.feed.rows("fare_media.txt")}
        # product -> category (None: the default price) -> the sale the gate charges
        self.products: dict[str, dict[str | None, _Price]] = {}
        self.product_rows: dict[str, Row] = {}
        self.for_everyone: set[str] = set()  # products with a sale for no particular category
        offers: dict[tuple[str, str | None], list[tuple[int, Row, int]]] = defaultdict(list)
        for row in self.feed.rows("fare_products.txt"):
            pid = row.get("fare_product_id")
            if not pid:
                self.error(row, "fare_product_id is empty")
                continue
            currency = row.get("currency").upper()
            if self.currency and currency != self.currency:
                self.error(row, f"currency {currency} differs from {self.currency}: one table, one currency")
                continue
            self.currency = self.currency or currency
            try:
                minor = to_minor(row.get("amount"), currency)
            except ValueError as exc:
                self.error(row, str(exc))
                continue
            category = row.get("rider_category_id") or None
            if category is None:
                self.for_everyone.add(pid)
            if category is not None and category not in self.category_names:
                self.error(row, f"unknown rider_category_id {category!r}")
                continue
            if category == self.default_category:
                category = None
            media_id = row.get("fare_media_id")
            if media_id and media_id not in media:
                self.error(row, f"unknown fare_media_id {media_id!r}")
                continue
            kind = media[media_id].get("fare_media_type") if media_id else ""
            self.product_rows.setdefault(pid, row)
            offers[(pid, category)].append((_MEDIA_PREFERENCE.get(kind, 6), row, minor))
        for (pid, category), sales in offers.items():
            sales.sort(key=lambda s: (s[0], s[2]))
            _, row, minor = sales[0]
            self.products.setdefault(pid, {})[category] = _Price(minor, row)
            for _, other, other_minor in sales[1:]:
                if other_minor != minor:
                    self.unenforceable(
                        other.where,
                        f"product {pid!r} on medium {other.get('fare_media_id')!r} "
                        f"costs {other.get('amount')}; the gate charges the "
                        f"{row.get('fare_media_id') or 'any-medium'} price, {row.get('amount')}",
                    )
        if self.currency:
            self.notes.append(
                f"fare_products.txt: amounts in {self.currency}, imported as integer minor units "
                f"(the format's fen)"
            )

    def read_leg_rules(self) -> None:
        self.legs: list[_LegRow] = []
        groups = {row.get("timeframe_group_id") for row in self.feed.rows("timeframes.txt")}
        for row in self.feed.rows("fare_leg_rules.txt"):
            network, product = row.get("network_id"), row.get("fare_product_id")
            ok = True
            if network and network not in self.networks:
                if self.networks:
                    self.error(row, f"unknown network_id {network!r}")
                    ok = False
                else:
                    self.networks[network] = ""
            for column in ("from_area_id", "to_area_id"):
                if row.get(column) and row.get(column) not in self.areas:
                    self.error(row, f"unknown {column.removesuffix('_id')} {row.get(column)!r}")
                    ok = False
            for column in ("from_timeframe_group_id", "to_timeframe_group_id"):
                if row.get(column) and row.get(column) not in groups:
                    self.error(row, f"unknown {column} {row.get(column)!r}")
                    ok = False
            if product not in self.products:
                self.error(row, f"unknown fare_product_id {product!r}")
                ok = False
            if row.get("distance_type") or row.get("min_distance") or row.get("max_distance"):
                self.unenforceable(
                    row.where,
                    "a fare by distance travelled on a trip's shape: the gate knows "
                    "stations, not shapes; row not imported",
                )
                ok = False
            try:
                priority = int(row.get("rule_priority") or 0)
            except ValueError:
                self.error(row, f"rule_priority {row.get('rule_priority')!r} is not an integer")
                ok = False
            if not ok:
                continue
            if row.get("to_timeframe_group_id"):
                self.unenforceable(
                    row.where,
                    f"to_timeframe_group_id {row.get('to_timeframe_group_id')!r}: "
                    f"the gate prices a trip by its entry time only",
                )
            self.legs.append(
                _LegRow(
                    row,
                    row.get("leg_group_id"),
                    network,
                    row.get("from_area_id"),
                    row.get("to_area_id"),
                    row.get("from_timeframe_group_id"),
                    product,
                    priority,
                )
            )
        if not self.legs and not self.errors:
            self.errors.append("fare_leg_rules.txt: no fare leg rule the gate can use")
        if not self.networks:
            self.networks[DEFAULT_NETWORK] = self.feed_name()
        # An empty network_id is every network no row names (GTFS matching).
        named = {leg.network for leg in self.legs if leg.network}
        self.networks_of_leg = {
            id(leg): (
                [leg.network]
                if leg.network
                else [n for n in self.networks if n not in named] or list(self.networks)
            )
            for leg in self.legs
        }

    # --- building the rules ---

    def build_timeframes(self) -> list[dict[str, Any]]:
        used = {leg.timeframe for leg in self.legs if leg.timeframe}
        frames: list[dict[str, Any]] = []
        reported_services: set[str] = set()
        owner: list[str | None] = [None] * (7 * MINUTES_PER_DAY)  # the group each minute of the week is in
        for row in self.feed.rows("timeframes.txt"):
            group = row.get("timeframe_group_id")
            if group not in used:
                continue
            start, end = _clock(row, "start_time", "00:00", self), _clock(row, "end_time", "24:00", self)
            if start is None or end is None:
                continue
            days = list(("mon", "tue", "wed", "thu", "fri", "sat", "sun"))
            service = row.get("service_id")
            if service:
                cal = self.calendar.get(service)
                if cal is None:
                    self.unenforceable(
                        row.where,
                        f"service {service!r} has no calendar.txt row (dates only): "
                        f"the format's timeframes follow weekdays; row not imported",
                    )
                    continue
                days = [d[:3] for d in _DAYS if cal.get(d) == "1"]
                if not days:
                    self.unenforceable(row.where, f"service {service!r} runs on no weekday; row not imported")
                    continue
            frame = {"group": group, "days": days, "start": start, "end": end, "_service": service}
            if not self.claim(row, frame, owner):
                continue
            frames.append(frame)
            cal = self.calendar.get(service) if service else None
            if cal is not None and service not in reported_services:
                reported_services.add(service)
                if cal.get("start_date") > "20000101" or cal.get("end_date") < "20991231":
                    self.unenforceable(
                        cal.where,
                        f"service {service!r} runs {cal.get('start_date')} to "
                        f"{cal.get('end_date')}; the gate applies timeframe {group!r} "
                        f"on those weekdays on every date",
                    )
        self.frame_groups = [g for g in dict.fromkeys(f["group"] for f in frames)]
        for leg in self.legs:
            if leg.timeframe and leg.timeframe not in self.frame_groups:
                self.unenforceable(
                    leg.row.where,
                    f"timeframe group {leg.timeframe!r} has no timeframe the gate "
                    f"can apply; row not imported",
                )
        covered = owner
        # The band of minutes no timeframe covers. When the timeframes cover the whole week the first
        # group is that band, written without rows (TOML cannot write default_timeframe = null).
        self.needs_default = not frames or None in covered
        if not frames:
            self.default_band = ALL_TIMES
        elif self.needs_default:
            self.default_band = OUTSIDE_TIMEFRAMES
        else:
            self.default_band = frames[0]["group"]
            frames = [f for f in frames if f["group"] != self.default_band]
        return frames

    def claim(self, row: Row, frame: dict[str, Any], owner: list[str | None]) -> bool:
        """Give a timeframe row its minutes of the week, unless another group holds some of them: groups
        told apart only by their services' dates fall on the same weekdays, and the gate has one band a
        minute. The first row in the file keeps the minutes; a later one is listed and left out."""
        start, end = _minutes(frame["start"]), _minutes(frame["end"])
        if end <= start:
            self.unenforceable(row.where, "end_time is not after start_time; row not imported")
            return False
        minutes = [DAYS.index(day) * MINUTES_PER_DAY + m for day in frame["days"] for m in range(start, end)]
        other = next((owner[m] for m in minutes if owner[m] not in (None, frame["group"])), None)
        if other is not None:
            self.unenforceable(
                row.where,
                f"timeframe group {frame['group']!r} falls on minutes of the week "
                f"{other!r} already holds (only dates tell them apart); the gate "
                f"prices them as {other!r}, row not imported",
            )
            return False
        for m in minutes:
            owner[m] = frame["group"]
        return True

    def build_categories(self) -> dict[str, Any]:
        """The default category first, then every category some leg's product prices; a category only
        passes price is listed (the gate would charge it the default fare, which the feed never says)."""
        priced: set[str | None] = set()
        for leg in self.legs:
            priced |= set(self.products[leg.product])
            if leg.product in self.for_everyone:
                priced |= set(self.category_names)
        order = [self.default_category] + [c for c in self.category_names if c != self.default_category]
        result: dict[str, Any] = {}
        rows = {row.get("rider_category_id"): row for row in self.feed.rows("rider_categories.txt")}
        for cid in order:
            if cid is None:
                continue
            if cid == self.default_category or cid in priced:
                name = self.category_names[cid]
                result[cid] = {"name": name[:100]} if name else {}
            else:
                self.unenforceable(
                    rows[cid].where if cid in rows else "rider_categories.txt",
                    f"category {cid!r} ({self.category_names[cid] or 'unnamed'}) has no product "
                    f"in any fare leg rule; not imported (the gate would charge it the "
                    f"default category's fare)",
                )
        return result

    def category_layers(self, leg: _LegRow) -> dict[str | None, _Price]:
        return self.products[leg.product]

    def build_networks(
        self, timeframes: list[dict[str, Any]]
    ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        legs_of: dict[str, list[_LegRow]] = defaultdict(list)
        for leg in self.legs:
            for network in self.networks_of_leg[id(leg)]:
                legs_of[network].append(leg)
        groups = set(self.frame_groups)
        networks: dict[str, Any] = {}
        leg_rules: list[dict[str, Any]] = []
        station_keys: list[tuple[str, str, str, list[str] | None]] = []  # (network, kind, gtfs id, zones)
        for network, legs in legs_of.items():
            legs = [leg for leg in legs if not leg.timeframe or leg.timeframe in groups]
            zoned = any(leg.from_area or leg.to_area for leg in legs)
            entry = {
                "name": self.networks.get(network) or network,
                "mode": self.mode_of(network),
                "fare_collection": "entry_exit" if zoned else "flat",
            }
            networks[network] = {k: v for k, v in entry.items() if v}
            if zoned:
                zones = [a for a in self.areas if any(a in (leg.from_area, leg.to_area) for leg in legs)]
                for stop in self.stops_in(zones):
                    station_keys.append((network, "stop", stop, self.zone_of(stop, zones)))
                leg_rules.extend(self.zone_rules(network, zones, legs))
            else:
                routes = [r for r, n in self.route_network.items() if n == network]
                if not routes and len(legs_of) == 1:
                    routes = list(self.routes)
                for route in routes or [""]:
                    station_keys.append((network, "route", route, None))
                leg_rules.extend(self.flat_rules(network, legs))
        seen: dict[str, str] = {}
        for network, kind, gtfs_id, _ in station_keys:
            if kind == "stop" and seen.setdefault(gtfs_id, network) != network:
                self.notes.append(
                    f"stop_areas.txt: stop {gtfs_id!r} is priced by networks {seen[gtfs_id]!r} and "
                    f"{network!r}: it is a station of each, under two station ids"
                )
        return networks, self.number_stations(station_keys), leg_rules

    def mode_of(self, network: str) -> str:
        routes = [r for r, n in self.route_network.items() if n == network]
        if not self.route_network and len(self.networks) == 1:
            routes = list(self.routes)  # a feed that names no network: every route is in the one there is
        types = {self.routes[r].get("route_type") for r in routes}
        if len(types) == 1:
            return _MODES.get(types.pop(), "other")
        return "other" if types else ""

    def stops_in(self, zones: list[str]) -> list[str]:
        return list(dict.fromkeys(s for a in zones for s in self.area_stops.get(a, [])))

    def zone_of(self, stop: str, zones: list[str]) -> list[str]:
        """The stop's areas among the network's zones: more than one is a boundary station, priced at
        whichever reading is cheapest (`zones` in the rules)."""
        return list(dict.fromkeys(a for a, _ in self.stop_areas[stop] if a in zones))

    def number_stations(self, keys: list[tuple[str, str, str, list[str] | None]]) -> list[dict[str, Any]]:
        taken: set[int] = set()
        ids: list[int | None] = []
        for _, _, gtfs_id, _ in keys:
            if gtfs_id.isdigit() and 1 <= int(gtfs_id) <= _MAX_STATION_ID and int(gtfs_id) not in taken:
                taken.add(int(gtfs_id))
                ids.append(int(gtfs_id))
            else:
                ids.append(None)
        free = (i for i in range(1, _MAX_STATION_ID + 1) if i not in taken)
        stations = []
        for (network, kind, gtfs_id, zone), sid in zip(keys, ids, strict=True):
            if sid is None:
                sid = next(free, None)
                if sid is None:
                    self.errors.append(f"stops.txt: more than {_MAX_STATION_ID} stations")
                    break
            if kind == "stop":
                label = self.stops[gtfs_id].get("stop_name") or gtfs_id
            elif gtfs_id:
                route = self.routes[gtfs_id]
                label = " ".join(
                    x for x in (route.get("route_short_name"), route.get("route_long_name")) if x
                )
                label = label or gtfs_id
            else:
                label = f"{self.networks.get(network) or network} (any vehicle)"
                gtfs_id = f"any:{network}"  # the route the export writes for it
            station: dict[str, Any] = {"id": sid, "name": station_name(label, gtfs_id), "network": network}
            if zone is not None and len(zone) == 1:
                station["zone"] = zone[0]
            elif zone:
                station["zones"] = zone
            stations.append(station)
        return stations

    def zone_rules(self, network: str, zones: list[str], legs: list[_LegRow]) -> list[dict[str, Any]]:
        """One zones rule per (timeframe, category) layer the rows price."""
        layers: dict[tuple[str, str | None], list[tuple[_LegRow, _Price]]] = defaultdict(list)
        for leg in legs:
            for category, price in self.category_layers(leg).items():
                layers[(leg.timeframe, category)].append((leg, price))
        matrices: dict[tuple[str, str | None], list[list[int | None]]] = {}
        for (timeframe, category), rows in layers.items():
            matrices[(timeframe, category)] = [
                [self.pick(network, timeframe, category, a, b, rows) for b in zones] for a in zones
            ]
        rules: list[dict[str, Any]] = []
        base_layers = [tf for tf, cat in matrices if cat is None]
        if self.needs_default and "" not in base_layers and base_layers:
            merged = [
                [
                    max(
                        (v for tf in base_layers if (v := matrices[(tf, None)][i][j]) is not None),
                        default=None,
                    )
                    for j in range(len(zones))
                ]
                for i in range(len(zones))
            ]
            matrices[("", None)] = merged
            self.unenforceable(
                "fare_leg_rules.txt",
                f"network {network!r} has no fare outside timeframes "
                f"{', '.join(base_layers)}; the gate charges the highest "
                f"of their fares there",
            )
        for (timeframe, category), matrix in matrices.items():
            base = matrices.get((timeframe, None)) or matrices.get(("", None))
            filled = self.fill(network, timeframe, category, zones, matrix, base)
            rule: dict[str, Any] = {"kind": "zones", "network": network}
            if timeframe:
                rule["timeframe"] = timeframe
            if category is not None:
                rule["rider_category"] = category
            rule["zones"] = list(zones)
            rule["matrix"] = filled
            rules.append(rule)
        return rules

    def pick(
        self,
        network: str,
        timeframe: str,
        category: str | None,
        a: str,
        b: str,
        rows: list[tuple[_LegRow, _Price]],
    ) -> int | None:
        """The fare GTFS matching gives a trip from area a to b: highest rule_priority, then the most
        specific row (both areas named beats one beats none); among equals the cheapest, the rest listed."""
        matches = [(leg, price) for leg, price in rows if leg.from_area in ("", a) and leg.to_area in ("", b)]
        if not matches:
            return None
        best_priority = max(leg.priority for leg, _ in matches)
        matches = [m for m in matches if m[0].priority == best_priority]
        best_specific = max(bool(leg.from_area) + bool(leg.to_area) for leg, _ in matches)
        matches = [m for m in matches if bool(m[0].from_area) + bool(m[0].to_area) == best_specific]
        matches.sort(key=lambda m: m[1].minor)
        for leg, price in matches[1:]:
            if price.minor != matches[0][1].minor:
                self.unenforceable(
                    leg.row.where,
                    f"a second product for {a}->{b} on network {network!r}: the "
                    f"rider may choose, the gate charges the cheapest "
                    f"({matches[0][0].product})",
                )
        return matches[0][1].minor

    def fill(
        self,
        network: str,
        timeframe: str,
        category: str | None,
        zones: list[str],
        matrix: list[list[int | None]],
        base: list[list[int | None]] | None,
    ) -> list[list[int]]:
        everything = [v for row in matrix for v in row if v is not None]
        out: list[list[int]] = []
        for i, row in enumerate(matrix):
            line: list[int] = []
            for j, value in enumerate(row):
                if value is not None:
                    line.append(value)
                    continue
                if category is not None and base is not None and base[i][j] is not None:
                    line.append(base[i][j] or 0)  # the category's own rows leave this pair at the base fare
                    continue
                fallback = max((v for v in row if v is not None), default=max(everything, default=0))
                self.unenforceable(
                    "fare_leg_rules.txt",
                    f"no fare from area {zones[i]!r} to {zones[j]!r} on network {network!r}"
                    f"{f' in timeframe {timeframe!r}' if timeframe else ''}"
                    f"{f' for {category!r}' if category else ''} (not sold); the gate cannot "
                    f"refuse an exit, so it charges the highest fare from {zones[i]!r}, "
                    f"{fallback}",
                )
                line.append(fallback)
            out.append(line)
        return out

    def flat_rules(self, network: str, legs: list[_LegRow]) -> list[dict[str, Any]]:
        layers: dict[tuple[str, str | None], list[tuple[_LegRow, _Price]]] = defaultdict(list)
        for leg in legs:
            for category, price in self.category_layers(leg).items():
                layers[(leg.timeframe, category)].append((leg, price))
        if self.needs_default and not any(tf == "" and cat is None for tf, cat in layers):
            base = [(tf, rows) for (tf, cat), rows in layers.items() if cat is None]
            if base:
                layers[("", None)] = [max((r for _, rows in base for r in rows), key=lambda r: r[1].minor)]
                self.unenforceable(
                    "fare_leg_rules.txt",
                    f"network {network!r} has no fare outside timeframes; "
                    f"the gate charges the highest of its fares there",
                )
        rules = []
        for (timeframe, category), rows in layers.items():
            fare = self.pick(network, timeframe, category, "", "", rows)
            rule: dict[str, Any] = {"kind": "flat", "network": network}
            if timeframe:
                rule["timeframe"] = timeframe
            if category is not None:
                rule["rider_category"] = category
            rule["fare_fen"] = fare or 0
            rules.append(rule)
        return rules

    def build_transfers(self) -> tuple[list[dict[str, Any]], int | None]:
        group_networks: dict[str, set[str]] = defaultdict(set)
        flat_fare: dict[str, int] = {}
        for leg in self.legs:
            for network in self.networks_of_leg[id(leg)]:
                group_networks[leg.group].add(network)
                price = self.products[leg.product].get(None)
                if not (leg.from_area or leg.to_area) and price is not None and not leg.timeframe:
                    flat_fare[network] = price.minor
        rows = self.feed.rows("fare_transfer_rules.txt")
        # An empty leg group is every group no row of the same column names (GTFS matching).
        unnamed: dict[str, set[str]] = {}
        for column in ("from_leg_group_id", "to_leg_group_id"):
            named = {row.get(column) for row in rows}
            unnamed[column] = set().union(*(n for g, n in group_networks.items() if g not in named))
        transfers: dict[tuple[str, str], dict[str, Any]] = {}
        counts: list[tuple[int, Row]] = []
        for row in rows:
            sources, targets = (
                group_networks.get(row.get(column), set()) if row.get(column) else unnamed[column]
                for column in ("from_leg_group_id", "to_leg_group_id")
            )
            if not sources or not targets:
                self.error(row, "unknown from_leg_group_id or to_leg_group_id")
                continue
            kind, product = row.get("fare_transfer_type"), row.get("fare_product_id")
            amount = 0
            if product:
                price = self.products.get(product, {}).get(None)
                if price is None:
                    self.error(row, f"unknown fare_product_id {product!r}")
                    continue
                amount = price.minor
            window = self.window(row)
            for source in sorted(sources):
                for target in sorted(targets):
                    discount = self.discount(row, kind, amount, target, flat_fare)
                    if discount is None:
                        continue
                    key = (source, target)
                    if key in transfers:
                        self.unenforceable(
                            row.where, f"a second transfer rule {source} -> {target}: the first one is kept"
                        )
                        continue
                    transfers[key] = {
                        "from_network": source,
                        "to_network": target,
                        "window_min": window,
                        **discount,
                    }
            text = row.get("transfer_count")
            if text:
                counts.append((254 if text == "-1" else int(text) if text.isdigit() else 1, row))
        max_transfers = None
        if counts:
            max_transfers = max(min(c, 254) for c, _ in counts)
            for number, row in counts:
                if number != max_transfers:
                    self.unenforceable(
                        row.where,
                        f"transfer_count {row.get('transfer_count')}: the gate allows "
                        f"one count for every transfer, {max_transfers}",
                    )
        return list(transfers.values()), max_transfers

    def window(self, row: Row) -> int:
        limit = row.get("duration_limit")
        if not limit:
            self.unenforceable(
                row.where, f"no duration_limit: the gate needs one; a service day, {WHOLE_DAY_MIN} min"
            )
            return WHOLE_DAY_MIN
        seconds = int(limit) if limit.isdigit() else 0
        if seconds < 60:
            self.error(row, f"duration_limit {limit!r} must be a whole number of seconds, at least 60")
            return 1
        if seconds % 60:
            self.unenforceable(
                row.where, f"duration_limit {seconds} s: the gate counts whole minutes, {seconds // 60} min"
            )
        if row.get("duration_limit_type") not in ("", "2"):
            self.unenforceable(
                row.where,
                f"duration_limit_type {row.get('duration_limit_type')}: the gate "
                f"measures from the end of one leg to the start of the next (type 2)",
            )
        return max(1, seconds // 60)

    def discount(
        self, row: Row, kind: str, amount: int, target: str, flat_fare: dict[str, int]
    ) -> dict[str, int] | None:
        """The next leg's discount a transfer rule gives, when it does not depend on the first leg."""
        if kind == "0" and amount == 0:
            return {"discount_percent": 100}
        if kind == "0" and target in flat_fare and flat_fare[target] >= amount:
            return {"discount_fen": flat_fare[target] - amount}
        if kind == "1" and amount == 0:
            return {"discount_fen": 0}
        what = {
            "0": "the transfer costs a fixed amount whatever the next leg's fare",
            "1": "a transfer fee on top of both legs",
            "2": "one price for both legs together",
        }.get(kind, f"fare_transfer_type {kind!r}")
        self.unenforceable(
            row.where,
            f"{what} ({amount}): the gate discounts the next leg by a fixed amount "
            f"or a percentage only; not imported for {target!r}",
        )
        return None

    def report_join_rules(self) -> None:
        for row in self.feed.rows("fare_leg_join_rules.txt"):
            a, b = row.get("from_network_id"), row.get("to_network_id")
            if a == b and not row.get("from_stop_id") and not row.get("to_stop_id"):
                self.notes.append(
                    f"{row.where}: legs on network {a!r} join into one: a trip is priced from "
                    f"entry to exit already"
                )
            else:
                self.unenforceable(
                    row.where,
                    f"legs joined across networks {a!r} -> {b!r}"
                    f"{' at given stops' if row.get('from_stop_id') else ''}: a "
                    f"station belongs to one network; each leg is priced alone",
                )

    def report_unused_products(self) -> None:
        used = {leg.product for leg in self.legs}
        used |= {row.get("fare_product_id") for row in self.feed.rows("fare_transfer_rules.txt")}
        for pid, row in self.product_rows.items():
            if pid not in used:
                self.unenforceable(
                    row.where,
                    f"product {pid!r} ({row.get('fare_product_name') or 'unnamed'}, "
                    f"{row.get('amount')} {row.get('currency')}) is priced by no fare "
                    f"leg rule: passes and period products are not enforced",
                )


def station_name(label: str, gtfs_id: str) -> str:
    """'Czarna' and '100' -> 'Czarna [100]', at most 100 characters (the label is shortened)."""
    suffix = f" [{gtfs_id}]" if gtfs_id else ""
    return label[: 100 - len(suffix)].rstrip() + suffix


def _clock(row: Row, column: str, default: str, importer: _Importer) -> str | None:
    text = row.get(column)
    if not text:
        return default
    parts = text.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        importer.error(row, f"{column} {text!r} is not HH:MM:SS")
        return None
    h, m, s = (int(p) for p in parts)
    if h * 60 + m > MINUTES_PER_DAY or m > 59 or s > 59:
        importer.error(row, f"{column} {text!r} is after 24:00:00")
        return None
    if s:
        importer.unenforceable(row.where, f"{column} {text}: the gate counts whole minutes, {h:02d}:{m:02d}")
    return f"{h:02d}:{m:02d}"


def _minutes(text: str) -> int:
    return int(text[:2]) * 60 + int(text[3:])


def _hm(minutes: int) -> str:
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
