"""FareRules -> GTFS-Fares v2 files, with every rule GTFS cannot state listed instead of dropped.

What is written:
- agency.txt (name, the rules' time_zone, else a fixed-offset Etc/GMT zone), networks.txt, routes.txt +
  route_networks.txt (one route an entry/exit network, one a flat-network station: a bus reader),
  stops.txt (entry/exit stations; the GTFS stop id is the one in the station name's brackets, else the
  station id);
- areas.txt + stop_areas.txt: a "zones" network's zones (a boundary station in each of its areas); a
  network priced by distance or OD pairs gets one area a station and its fares as computed by the
  compiler, pair by pair;
- timeframes.txt + calendar.txt: each time band's minutes of the week as rows (a band past midnight is
  two rows); rules for every band are rows without a timeframe;
- rider_categories.txt (the first category the default), fare_media.txt (the phone, a transit card),
  fare_products.txt (one product a price and category), fare_leg_rules.txt (leg group = network),
  fare_transfer_rules.txt where the discount is a free transfer or leaves a fixed price on a flat
  network, fare_leg_join_rules.txt (a trip across the lines of an entry/exit network is one leg).
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from fare_core.compiler import compile_band_of_minute, compile_rules, fare_index
from fare_core.gtfs.money import from_minor
from fare_core.rules import (
    DAYS,
    MINUTES_PER_DAY,
    FareRules,
    FlatLegRule,
    ZoneLegRule,
)

MEDIUM = "phone"
_ROUTE_TYPE = {"tram": "0", "metro": "1", "rail": "2", "bus": "3", "ferry": "4", "other": "3"}
_DAY_COLUMNS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_SUFFIX = re.compile(r"^(.*) \[([^\]]+)\]$")
_FAR_DATES = ("20000101", "20991231")  # timeframes hold on weekdays, whatever the date


def split_name(name: str, station_id: int) -> tuple[str, str]:
    """'Czarna [100]' -> ('Czarna', '100'); a name without brackets keeps the station id as GTFS id."""
    match = _SUFFIX.match(name)
    return (match[1], match[2]) if match else (name, str(station_id))


class _Writer:
    def __init__(self, rules: FareRules, currency: str) -> None:
        self.rules = rules
        self.currency = currency
        self.files: dict[str, list[dict[str, str]]] = defaultdict(list)
        self.lost: list[str] = []
        self.products: dict[tuple[int, str], str] = {}  # (amount, category or "") -> product id

    def row(self, name: str, **values: str) -> None:
        if name in ("stops.txt", "stop_areas.txt", "areas.txt") and values in self.files[name]:
            return  # a stop priced by two networks is one stop of the feed
        self.files[name].append(values)

    def product(self, amount: int, category: str | None) -> str:
        key = (amount, category or "")
        if key not in self.products:
            pid = f"fare_{from_minor(amount, self.currency).replace('.', '_')}" + (
                f"_{category}" if category else ""
            )
            self.products[key] = pid
            self.row(
                "fare_products.txt",
                fare_product_id=pid,
                fare_product_name="",
                fare_media_id=MEDIUM,
                rider_category_id=category or "",
                amount=from_minor(amount, self.currency),
                currency=self.currency,
            )
        return self.products[key]

    def sale(self, product: str, amount: int, category: str) -> None:
        """Another category's price of an existing product."""
        self.row(
            "fare_products.txt",
            fare_product_id=product,
            fare_product_name="",
            fare_media_id=MEDIUM,
            rider_category_id=category,
            amount=from_minor(amount, self.currency),
            currency=self.currency,
        )

    def run(self) -> None:
        r = self.rules
        self.write_agency()
        for i, (cid, category) in enumerate(r.rider_categories.items()):
            self.row(
                "rider_categories.txt",
                rider_category_id=cid,
                rider_category_name=category.name,
                is_default_fare_category="1" if i == 0 else "0",
            )
        self.row("fare_media.txt", fare_media_id=MEDIUM, fare_media_name="RF-SIM phone", fare_media_type="2")
        self.band_group = self.write_timeframes()
        for network_id, network in r.networks.items():
            self.row("networks.txt", network_id=network_id, network_name=network.name)
            stations = [s for s in r.stations if s.network == network_id]
            if network.fare_collection == "flat":
                for station in stations:
                    label, gtfs_id = split_name(station.name, station.id)
                    self.row(
                        "routes.txt",
                        route_id=gtfs_id,
                        route_short_name="",
                        route_long_name=label,
                        route_type=_ROUTE_TYPE[network.mode],
                    )
                    self.row("route_networks.txt", network_id=network_id, route_id=gtfs_id)
                self.write_flat(network_id)
                continue
            route_id = f"network:{network_id}"
            self.row(
                "routes.txt",
                route_id=route_id,
                route_short_name="",
                route_long_name=network.name or network_id,
                route_type=_ROUTE_TYPE[network.mode],
            )
            self.row("route_networks.txt", network_id=network_id, route_id=route_id)
            self.row("fare_leg_join_rules.txt", from_network_id=network_id, to_network_id=network_id)
            for station in stations:
                label, gtfs_id = split_name(station.name, station.id)
                self.row("stops.txt", stop_id=gtfs_id, stop_name=label)
            if network.edges:
                self.lost.append(
                    f"networks.{network_id}.edges: track distances are not GTFS fare data; the fares "
                    f"they give are written pair by pair"
                )
            rules = [rule for rule in r.leg_rules if rule.network == network_id]
            if all(isinstance(rule, ZoneLegRule) for rule in rules):
                self.write_zones(network_id, rules)
            else:
                self.write_pairs(network_id)
        self.write_transfers()
        self.list_unstated()

    def write_agency(self) -> None:
        offset = self.rules.utc_offset_min
        if self.rules.time_zone is not None:
            zone = self.rules.time_zone  # its summer time too
        elif offset % 60:
            self.lost.append(f"utc_offset_min {offset}: no fixed-offset IANA zone; written as UTC")
            zone = "Etc/UTC"
        else:
            hours = -offset // 60  # Etc/GMT signs are inverted: UTC+8 is Etc/GMT-8
            zone = "Etc/GMT" if hours == 0 else f"Etc/GMT{hours:+d}"
        self.row(
            "agency.txt",
            agency_id="operator",
            agency_name=self.rules.name,
            agency_url="https://example.invalid/",
            agency_timezone=zone,
        )

    def write_timeframes(self) -> dict[str, str]:
        """Each band named by some rule -> its timeframe group, written as the minutes it holds."""
        r = self.rules
        named = {rule.timeframe for rule in r.leg_rules if rule.timeframe is not None}
        if any(not isinstance(rule, (ZoneLegRule, FlatLegRule)) for rule in r.leg_rules):
            named |= set(r.band_names)  # pair-by-pair fares are written for every band
        band_of_minute = compile_band_of_minute(r)
        groups: dict[str, str] = {}
        for index, band in enumerate(r.band_names):
            if band not in named:
                continue
            groups[band] = band
            per_day: list[tuple[tuple[int, int], ...]] = []
            for day in range(7):
                spans: list[tuple[int, int]] = []
                start = None
                for minute in range(MINUTES_PER_DAY + 1):
                    inside = (
                        minute < MINUTES_PER_DAY and band_of_minute[day * MINUTES_PER_DAY + minute] == index
                    )
                    if inside and start is None:
                        start = minute
                    elif not inside and start is not None:
                        spans.append((start, minute))
                        start = None
                per_day.append(tuple(spans))
            for day_spans in dict.fromkeys(per_day):
                days = [d for d in range(7) if per_day[d] == day_spans]
                if not day_spans:
                    continue
                service = "days_" + "_".join(DAYS[d] for d in days)
                if service not in {row["service_id"] for row in self.files["calendar.txt"]}:
                    self.row(
                        "calendar.txt",
                        service_id=service,
                        **{c: "1" if d in days else "0" for d, c in enumerate(_DAY_COLUMNS)},
                        start_date=_FAR_DATES[0],
                        end_date=_FAR_DATES[1],
                    )
                for start, end in day_spans:
                    self.row(
                        "timeframes.txt",
                        timeframe_group_id=band,
                        start_time=_hms(start),
                        end_time=_hms(end),
                        service_id=service,
                    )
        return groups

    def leg(
        self, network: str, timeframe: str | None, product: str, from_area: str = "", to_area: str = ""
    ) -> None:
        self.row(
            "fare_leg_rules.txt",
            leg_group_id=network,
            network_id=network,
            from_area_id=from_area,
            to_area_id=to_area,
            from_timeframe_group_id=self.band_group.get(timeframe or "", ""),
            fare_product_id=product,
        )

    def category_prices(self, fare: int, category: str | None, network: str) -> list[tuple[int, str | None]]:
        """Product sales for a rule's fare: as written for a named category; for the base price one sale
        for everyone, or one a category when their discounts (on this network) make prices differ."""
        if category is not None:
            return [(fare, category)]
        prices = {cid: c.discounted_on(network, fare) for cid, c in self.rules.rider_categories.items()}
        if len(set(prices.values())) == 1:
            return [(fare, None)]
        return list((v, k) for k, v in prices.items())

    def write_zones(self, network: str, rules: list[Any]) -> None:
        zones = list(dict.fromkeys(z for rule in rules for z in rule.zones))
        for zone in zones:
            if zone not in {row["area_id"] for row in self.files["areas.txt"]}:
                self.row("areas.txt", area_id=zone, area_name="")
        for station in self.rules.stations:
            if station.network == network:
                for zone in station.zone_names:  # a boundary station: a stop in each of its areas
                    self.row("stop_areas.txt", area_id=zone, stop_id=split_name(station.name, station.id)[1])
        for rule in rules:
            for i, a in enumerate(rule.zones):
                for j, b in enumerate(rule.zones):
                    for amount, category in self.category_prices(rule.matrix[i][j], rule.rider_category,
                                                                    network):
                        self.leg(network, rule.timeframe, self.product(amount, category), a, b)

    def write_pairs(self, network: str) -> None:
        """A distance or OD priced network: one area a station, every pair's compiled fare a row."""
        table = compile_rules(self.rules, 0, 0)
        ids = list(table.station_ids)
        members = [i for i, s in enumerate(ids) if table.network_names[table.station_network[i]] == network]
        areas = {}
        for i in members:
            station = next(s for s in self.rules.stations if s.id == ids[i])
            label, gtfs_id = split_name(station.name, station.id)
            areas[i] = f"station:{gtfs_id}"
            self.row("areas.txt", area_id=areas[i], area_name=label)
            self.row("stop_areas.txt", area_id=areas[i], stop_id=gtfs_id)
        self.lost.append(
            f"network {network!r}: its distance/OD rules are written as each pair's fare "
            f"(one area a station); a same-station exit within the window is not GTFS"
        )
        for band, name in enumerate(table.band_names):
            timeframe = name if name in self.band_group else None
            for c, category in enumerate(table.category_names):
                for i in members:
                    for j in members:
                        fare = table.fares[fare_index(table, band, c, i, j)]
                        self.leg(
                            network,
                            timeframe,
                            self.product(fare, category if c else None),
                            areas[i],
                            areas[j],
                        )

    def write_flat(self, network: str) -> None:
        for rule in self.rules.leg_rules:
            if isinstance(rule, FlatLegRule) and rule.network == network:
                for amount, category in self.category_prices(rule.fare_fen, rule.rider_category,
                                                                    rule.network):
                    self.leg(network, rule.timeframe, self.product(amount, category))

    def write_transfers(self) -> None:
        r = self.rules
        flat_fare = {
            rule.network: rule.fare_fen
            for rule in r.leg_rules
            if isinstance(rule, FlatLegRule) and rule.timeframe is None and rule.rider_category is None
        }
        stated_count = False
        for i, rule in enumerate(r.transfer_rules):
            where = f"transfer_rules[{i}]"
            if rule.discount_percent == 100:
                product = self.product(0, None)
                kind = "0"
            elif rule.discount_percent == 0 and rule.discount_fen == 0:
                product, kind = "", "1"
            elif rule.discount_percent == 0 and rule.to_network in flat_fare:
                # what the transfer leaves to pay on the flat network, category by category
                base = flat_fare[rule.to_network]
                prices = {
                    cid: max(0, c.discounted_on(rule.to_network, base) - rule.discount_fen)
                    for cid, c in r.rider_categories.items()
                }
                first = next(iter(prices))
                if len(set(prices.values())) == 1:
                    product = self.product(prices[first], None)
                else:
                    product = self.product(prices[first], None)
                    for cid, amount in prices.items():
                        if cid != first:
                            self.sale(product, amount, cid)
                kind = "0"
            else:
                self.lost.append(
                    f"{where}: {rule.discount_fen} fen and {rule.discount_percent}% off the next leg "
                    f"({rule.from_network} -> {rule.to_network}): GTFS prices a transfer, not a discount "
                    f"on a leg whose fare varies; not written"
                )
                continue
            same = rule.from_network == rule.to_network
            stated_count |= same
            self.row(
                "fare_transfer_rules.txt",
                from_leg_group_id=rule.from_network,
                to_leg_group_id=rule.to_network,
                transfer_count=str(r.max_transfers) if same else "",
                duration_limit=str(rule.window_min * 60),
                duration_limit_type="2",
                fare_transfer_type=kind,
                fare_product_id=product,
            )
        if r.max_transfers != 1 and not stated_count:
            self.lost.append(
                f"max_transfers {r.max_transfers}: GTFS counts transfers only between legs of one "
                f"network; not written"
            )

    def list_unstated(self) -> None:
        r = self.rules
        p = r.paid_area
        for name, value in (
            ("max_inside_min", p.max_inside_min),
            ("overstay_surcharge_fen", p.overstay_surcharge_fen),
            ("same_station_window_min", p.same_station_window_min),
            ("anti_passback_min", p.anti_passback_min),
        ):
            if value:
                self.lost.append(f"paid_area.{name} = {value}: not GTFS fare data")
        if p.missing_exit_fare_fen is not None:
            self.lost.append(
                f"paid_area.missing_exit_fare_fen = {p.missing_exit_fare_fen}: not GTFS fare data"
            )
        if r.min_entry_balance_fen:
            self.lost.append(f"min_entry_balance_fen = {r.min_entry_balance_fen}: not GTFS fare data")
        if r.service_day_start != "04:00":
            self.lost.append(f"service_day_start = {r.service_day_start}: not GTFS fare data")
        for cid, category in r.rider_categories.items():
            if category.daily_cap_fen:
                self.lost.append(
                    f"rider_categories.{cid}.daily_cap_fen = {category.daily_cap_fen}: fare capping "
                    f"is not in GTFS-Fares v2"
                )
            if category.weekly_cap_fen:
                self.lost.append(
                    f"rider_categories.{cid}.weekly_cap_fen = {category.weekly_cap_fen} "
                    f"({r.weekly_cap_period}): fare capping is not in GTFS-Fares v2"
                )
            if category.monthly_threshold_fen:
                self.lost.append(
                    f"rider_categories.{cid}.monthly_threshold_fen: monthly discounts are not in "
                    f"GTFS-Fares v2"
                )
            if category.monthly is not None:
                self.lost.append(
                    f"rider_categories.{cid}.monthly: a {category.monthly.basis} scheme of "
                    f"{len(category.monthly.tiers)} tiers; monthly discounts are not in GTFS-Fares v2"
                )
            if category.percent_off is not None or category.fen_off is not None or category.free:
                self.lost.append(
                    f"rider_categories.{cid}: its discount is written as its own fares, product by product"
                )
        if r.deny_list.exit_with_open_entry != "let_out_charged":
            self.lost.append("deny_list.exit_with_open_entry: not GTFS fare data")
        if r.overdraft.limit_fen:
            self.lost.append(f"overdraft.limit_fen = {r.overdraft.limit_fen}: not GTFS fare data")
        for i, calendar in enumerate(r.calendars):
            self.lost.append(
                f"calendars[{i}] ({len(calendar.dates)} dates priced as {calendar.price_as}): timeframes "
                f"are written by weekday; the dates are not written"
            )

    def save(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for name, rows in sorted(self.files.items()):
            if not rows:
                continue
            path = directory / name
            columns = list(dict.fromkeys(c for row in rows for c in row))
            with path.open("w", encoding="utf-8", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=columns, lineterminator="\n")
                writer.writeheader()
                writer.writerows(rows)
            written.append(path)
        return written


def export_gtfs(rules: FareRules, directory: str | Path, currency: str = "CNY") -> list[str]:
    """Write `rules` as GTFS-Fares v2 files into `directory`; return what GTFS could not state."""
    writer = _Writer(rules, currency.upper())
    writer.run()
    writer.save(Path(directory))
    return writer.lost


def _hms(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}:00"
