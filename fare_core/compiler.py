"""Compile FareRules into a TableData: every fare computed once here, so a tap only looks prices up.

Steps: stations get dense indices in operator-id order; track distances are shortest paths over each
entry/exit network's segment graph (Dijkstra, integer metres; a path may change lines at an interchange
station, inside the paid area); each (time band, OD pair) gets its adult fare from the leg rules (an
explicit OD fare, else the band's own rule, else the rule for all bands); each rider category's price is
derived from the adult fare by its discount, percentages rounded half up to the fen
((fare * (100 - p) + 50) // 100), fixed discounts floored at 0 — except where a leg rule names the
category (`rider_category`): those fares are the category's as written. Precedence for one category,
band and pair: the category's own OD fare, its own distance/zone rule, then the adult OD fare, the
adult distance/zone rule (discounted); within each, a band's own rule beats a rule for all bands.

The minimum entry balance applies to the categories the rules list (min_entry_categories), or, when they
list none, to every category the compiled table charges anything: a free or fully discounted category
gets 0. The deny-list rule compiles to table_data.DENYLISTED_EXIT_*.

A station in several zones is priced at the cheapest reading of the zones rule; a category whose
discount names networks keeps the adult fare elsewhere; an od table silent on exiting at the entry
station, where the paid area has a same-station rule, gets the same-station fare there. The monthly
schemes, weekly caps, overdraft and calendars compile to TableData's arrays as they are written; a
time_zone compiles to its UTC offset changes from valid_from to valid_until (utc_offsets).

Table cells no trip uses are filled so that a lookup there can never undercharge: a pair of stations on
different networks holds the origin's missing-exit fare, and a flat-network (bus) row holds that
network's flat fare.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import time
import zoneinfo
from array import array
from collections.abc import Iterable
from datetime import UTC, date, datetime

from fare_core.rules import (
    DAYS,
    DistanceLegRule,
    FareRules,
    FlatLegRule,
    OdLegRule,
    RiderCategory,
    ZoneLegRule,
    parse_date,
    timeframe_minutes,
)
from fare_core.table_data import (
    DENYLISTED_EXIT_LET_OUT,
    DENYLISTED_EXIT_REFUSE,
    MINUTES_PER_WEEK,
    MONTH_COUNTS,
    MONTH_DISCOUNTED,
    MONTHLY_BY_RIDES,
    MONTHLY_SURCHARGES_COUNT,
    OVERDRAFT_BOARDING,
    OVERDRAFT_EXIT,
    TableData,
    local_minute_of_week,
    minimum_for_paying_categories,
)

UNPRICED = -1  # a matrix cell no rule of the layer prices
SECONDS_PER_MINUTE = 60
# 1970-01-01 (UTC second 0) was a Thursday: day 3 of a Monday-based week.
_EPOCH_MINUTE_OF_WEEK = 3 * 24 * 60


def track_distances(stations: list[int], edges: Iterable[tuple[int, int, int]]) -> dict[int, dict[int, int]]:
    """Shortest track distance in metres between every pair of `stations` (absent key: unreachable).

    `edges` are undirected (a, b, metres). Dijkstra from each station: O(S * E log S), a few tens of
    milliseconds for a 300-station network.
    """
    graph: dict[int, list[tuple[int, int]]] = {s: [] for s in stations}
    for a, b, metres in edges:
        graph[a].append((b, metres))
        graph[b].append((a, metres))
    result: dict[int, dict[int, int]] = {}
    for source in stations:
        best = {source: 0}
        queue = [(0, source)]
        while queue:
            dist, node = heapq.heappop(queue)
            if dist > best[node]:
                continue
            for neighbour, metres in graph[node]:
                candidate = dist + metres
                if candidate < best.get(neighbour, candidate + 1):
                    best[neighbour] = candidate
                    heapq.heappush(queue, (candidate, neighbour))
        result[source] = best
    return result


def minute_of_week(utc_seconds: int, utc_offset_min: int) -> int:
    """Local minute of the week (Monday 00:00 = 0) of a UTC time, as band_of_minute is indexed."""
    return (utc_seconds // SECONDS_PER_MINUTE + utc_offset_min + _EPOCH_MINUTE_OF_WEEK) % MINUTES_PER_WEEK


def band_at(table: TableData, utc_seconds: int) -> int:
    """The time band index in force at a UTC time (summer time and date overrides as the core reads them)."""
    return table.band_of_minute[local_minute_of_week(table, utc_seconds)]


def fare_index(table: TableData, band: int, category: int, origin: int, dest: int) -> int:
    """Position of a fare in table.fares (dense indices), per the layout in table_data.py."""
    return ((band * table.n_categories + category) * table.n_stations + origin) * table.n_stations + dest


def compile_band_of_minute(rules: FareRules) -> bytes:
    bands = rules.band_names
    out = bytearray(MINUTES_PER_WEEK)  # every uncovered minute is band 0, the default (if there is one)
    for frame in rules.timeframes:
        index = bands.index(frame.group)
        for minute in timeframe_minutes(frame):
            out[minute] = index
    return bytes(out)


def _rule_for(rules: FareRules, kinds: tuple[type, ...], network: str, band: str,
              category: str | None) -> object | None:
    """The band's own rule of a kind for a network and category layer, else the one for all bands."""
    general = None
    for rule in rules.leg_rules:
        if isinstance(rule, kinds) and rule.network == network and rule.rider_category == category:
            if rule.timeframe == band:
                return rule
            if rule.timeframe is None:
                general = rule
    return general


def _od_fares(rules: FareRules, network: str, band: str, category: str | None) -> dict[tuple[int, int], int]:
    """Explicit OD fares for a band: rules for all bands first, the band's own rules override them."""
    fares: dict[tuple[int, int], int] = {}
    for wanted in (None, band):
        for rule in rules.leg_rules:
            if (isinstance(rule, OdLegRule) and rule.network == network and rule.timeframe == wanted
                    and rule.rider_category == category):
                for pair in rule.pairs:
                    fares[(pair.from_station, pair.to_station)] = pair.fare_fen
                    if pair.both_ways:
                        fares[(pair.to_station, pair.from_station)] = pair.fare_fen
    return fares


def _layer_matrix(rules: FareRules, band: str, category: str | None, ids: list[int], network_of: list[str],
                  distances: dict[str, dict[int, dict[int, int]]]) -> list[int]:
    """Fares one layer of rules sets for every (origin, dest) of one band; UNPRICED where it sets none.

    Layer None holds the adult price and, the rules guarantee, prices every pair within an entry/exit
    network; a category's own layer may price only some pairs.
    """
    n = len(ids)
    zones_of = {s.id: s.zone_names for s in rules.stations}
    matrix = [UNPRICED] * (n * n)
    by_network: dict[str, list[int]] = {}
    for i, network in enumerate(network_of):
        by_network.setdefault(network, []).append(i)
    for network_id, members in by_network.items():
        if rules.networks[network_id].fare_collection == "flat":
            continue  # filled from the flat fare later
        base = _rule_for(rules, (DistanceLegRule, ZoneLegRule), network_id, band, category)
        explicit = _od_fares(rules, network_id, band, category)
        if base is None and not explicit:
            continue
        dist = distances.get(network_id, {})
        by_distance: dict[int, int] = {}  # many pairs share a distance; price each distance once
        for i in members:
            row = i * n
            reach = dist.get(ids[i], {})
            for j in members:
                pair = (ids[i], ids[j])
                if pair in explicit:
                    matrix[row + j] = explicit[pair]
                elif isinstance(base, DistanceLegRule):
                    metres = reach.get(ids[j])  # the rules make each adult pair reachable or explicit
                    if metres is not None:
                        fare = by_distance.get(metres)
                        if fare is None:
                            fare = by_distance[metres] = base.fare(metres)
                        matrix[row + j] = fare
                elif isinstance(base, ZoneLegRule):  # a station in several zones: the cheapest reading
                    matrix[row + j] = min(base.matrix[base.zones.index(zf)][base.zones.index(zt)]
                                          for zf in zones_of[ids[i]] for zt in zones_of[ids[j]])
        if category is None and rules.paid_area.same_station_window_min:
            for i in members:  # an od table silent on exiting at the entry: the same-station fare
                if matrix[i * n + i] == UNPRICED:
                    matrix[i * n + i] = rules.paid_area.same_station_fare_fen
    return matrix


def _flat_price(rules: FareRules, network: str, band: str, category_id: str) -> int:
    """A category's own flat fare as written, else the adult flat fare with its discount."""
    own = _rule_for(rules, (FlatLegRule,), network, band, category_id)
    if isinstance(own, FlatLegRule):
        return own.fare_fen
    adult = _rule_for(rules, (FlatLegRule,), network, band, None)
    if not isinstance(adult, FlatLegRule):
        return 0  # not a flat network
    return rules.rider_categories[category_id].discounted_on(network, adult.fare_fen)


def _category_matrices(rules: FareRules, bands: list[str], adult: list[list[int]], ids: list[int],
                       network_of: list[str], distances: dict[str, dict[int, dict[int, int]]]
                       ) -> list[list[list[int]]]:
    """[category][band] -> fares: the category's own rules where they price a pair, else the discounted
    adult fare."""
    result = []
    for category_id, category in rules.rider_categories.items():
        has_own = any(rule.rider_category == category_id for rule in rules.leg_rules)
        matrices = []
        for b, band in enumerate(bands):
            derived = _priced(category, adult[b], network_of)
            if has_own:
                own = _layer_matrix(rules, band, category_id, ids, network_of, distances)
                derived = [o if o != UNPRICED else d for o, d in zip(own, derived, strict=True)]
            matrices.append(derived)
        result.append(matrices)
    return result


def _priced(category: RiderCategory, values: list[int], network_of: list[str]) -> list[int]:
    """Apply a category's discount to an [origin][dest] matrix of adult fares (each distinct fare
    computed once); a row from a network the discount does not cover keeps the adult fares."""
    cache = {v: category.discounted(v) if v != UNPRICED else v for v in set(values)}
    if category.discount_networks is None:
        return [cache[v] for v in values]
    n = len(network_of)
    out: list[int] = []
    for i, network in enumerate(network_of):
        row = values[i * n:(i + 1) * n]
        if category.discounts(network):
            out.extend(cache[v] for v in row)
        else:
            out.extend(row)
    return out


def rules_digest(rules: FareRules) -> str:
    """SHA-256 of the rules' canonical JSON: names the source of a table independently of formatting."""
    data = rules.model_dump(mode="json", by_alias=True)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _missing_exit_fares(rules: FareRules, categories: list[RiderCategory], network_of: list[str],
                        per_category: list[list[list[int]]]) -> list[int]:
    """[category][origin] fare charged for a journey that never exited: the operator's fixed fare if set
    (discounted per category), else the highest fare from the origin in any band; 0 on a flat network."""
    n = len(network_of)
    missing: list[int] = []
    fixed_missing = rules.paid_area.missing_exit_fare_fen
    for c, category in enumerate(categories):
        for i in range(n):
            if rules.networks[network_of[i]].fare_collection == "flat":
                missing.append(0)  # a bus leg is paid on boarding; nothing is left open
            elif fixed_missing is not None:
                missing.append(category.discounted_on(network_of[i], fixed_missing))
            else:
                missing.append(max(max(m[i * n:(i + 1) * n]) for m in per_category[c]))
    return missing


def _fare_array(rules: FareRules, ids: list[int], network_of: list[str], per_category: list[list[list[int]]],
                flat: list[list[list[int]]], missing: list[int]) -> array[int]:
    """The [band][category][origin][destination] fares as uint32, unpriced cells filled so a lookup
    there never undercharges (see the module docstring); ValueError if a fare does not fit 32 bits."""
    n = len(ids)
    network_names = list(rules.networks)
    fares = array("I")
    for b in range(len(flat)):
        for c in range(len(per_category)):
            matrix = per_category[c][b]
            for i in range(n):
                row = matrix[i * n:(i + 1) * n]
                if rules.networks[network_of[i]].fare_collection == "flat":
                    row = [flat[b][c][network_names.index(network_of[i])]] * n
                elif UNPRICED in row:
                    filler = missing[c * n + i]
                    row = [filler if v == UNPRICED else v for v in row]
                try:
                    fares.extend(row)
                except OverflowError:
                    raise ValueError(f"a fare from station {ids[i]} ({max(row)} fen) does not fit 32 bits; "
                                     f"cap it with max_fen") from None
    return fares


def _transfer_arrays(rules: FareRules, network_names: list[str]) -> tuple[array[int], bytes, array[int]]:
    """[from network][to network] transfer discount (fen), discount percent and window (seconds)."""
    size = len(network_names) ** 2
    transfer_discount, transfer_window = array("I", [0] * size), array("I", [0] * size)
    transfer_percent = bytearray(size)
    for rule in rules.transfer_rules:
        k = network_names.index(rule.from_network) * len(network_names) + network_names.index(rule.to_network)
        transfer_discount[k] = rule.discount_fen
        transfer_percent[k] = rule.discount_percent
        transfer_window[k] = rule.window_min * SECONDS_PER_MINUTE
    return transfer_discount, bytes(transfer_percent), transfer_window


def compile_rules(rules: FareRules, version: int, created_at: int | None = None) -> TableData:
    """Turn validated rules into the fare table a gate loads; ValueError if the result is inconsistent."""
    if not 0 <= version <= 0xFFFFFFFF:
        raise ValueError(f"version {version} is outside 0..2^32-1")
    stations = sorted(rules.stations, key=lambda s: s.id)
    ids = [s.id for s in stations]
    network_names = list(rules.networks)
    network_of = [s.network for s in stations]
    categories = list(rules.rider_categories.values())
    bands = rules.band_names

    distances = {
        network_id: track_distances([s.id for s in stations if s.network == network_id],
                                    ((e.from_station, e.to_station, e.distance_m) for e in network.edges))
        for network_id, network in rules.networks.items() if network.fare_collection == "entry_exit"
    }
    adult = [_layer_matrix(rules, band, None, ids, network_of, distances) for band in bands]
    per_category = _category_matrices(rules, bands, adult, ids, network_of, distances)
    category_ids = list(rules.rider_categories)
    flat = [[[_flat_price(rules, network, band, category_id) for network in network_names]
             for category_id in category_ids] for band in bands]  # [band][category][network]

    missing = _missing_exit_fares(rules, categories, network_of, per_category)
    fares = _fare_array(rules, ids, network_of, per_category, flat, missing)
    flat_fares = array("I", (flat[b][c][k] for b in range(len(bands)) for c in range(len(categories))
                             for k in range(len(network_names))))
    transfer_discount, transfer_percent, transfer_window = _transfer_arrays(rules, network_names)

    paid = rules.paid_area
    base_offset, changes = utc_offsets(rules)
    overrides = date_overrides(rules)
    extra = {
        "rules_sha256": rules_digest(rules),
        "station_names": json.dumps({str(s.id): s.name for s in stations}, ensure_ascii=False,
                                    separators=(",", ":")),
    }
    if rules.time_zone is not None:
        extra["time_zone"] = rules.time_zone
    table = TableData(
        version=version,
        created_at=int(time.time()) if created_at is None else created_at,
        name=rules.name,
        utc_offset_min=base_offset,
        day_start_min=rules.day_start_min,
        station_ids=array("H", ids),
        station_network=bytes(network_names.index(x) for x in network_of),
        network_names=tuple(network_names),
        network_flat=bytes(int(rules.networks[x].fare_collection == "flat") for x in network_names),
        category_names=tuple(rules.rider_categories),
        band_names=tuple(bands),
        band_of_minute=compile_band_of_minute(rules),
        fares=fares,
        flat_fares=flat_fares,
        transfer_discount=transfer_discount,
        transfer_percent=transfer_percent,
        transfer_window_s=transfer_window,
        max_transfers=rules.max_transfers,
        daily_cap=array("I", (c.daily_cap_fen for c in categories)),
        max_inside_s=paid.max_inside_min * SECONDS_PER_MINUTE,
        overstay_surcharge=paid.overstay_surcharge_fen,
        same_station_window_s=paid.same_station_window_min * SECONDS_PER_MINUTE,
        same_station_fare=array("I", (_same_station_fare(rules, c) for c in categories)),
        missing_exit_fare=array("I", missing),
        anti_passback_s=paid.anti_passback_min * SECONDS_PER_MINUTE,
        min_entry_balance=array("I", [rules.min_entry_balance_fen] * len(categories)),
        max_balance=rules.max_balance_fen,
        denylisted_exit=_DENYLISTED_EXIT[rules.deny_list.exit_with_open_entry],
        month_start_min=rules.month_start_min,
        **_monthly_arrays(rules, network_names),  # type: ignore[arg-type]
        weekly_cap=array("I", (c.weekly_cap_fen for c in categories)),
        week_rolling=int(rules.weekly_cap_period == "rolling_7_days"),
        offset_change_at=array("I", (at for at, _ in changes)),
        offset_change_min=array("i", (minutes for _, minutes in changes)),
        date_override_day=array("I", (day for day, _ in overrides)),
        date_override_as=bytes(weekday for _, weekday in overrides),
        overdraft_limit=rules.overdraft.limit_fen,
        overdraft_taps=sum(_OVERDRAFT_TAPS[name] for name in set(rules.overdraft.taps))
        if rules.overdraft.limit_fen else 0,
        extra=extra,
    )
    table.validate()
    return dataclasses.replace(table, min_entry_balance=_min_entry_balances(rules, table))


_DENYLISTED_EXIT = {"let_out_charged": DENYLISTED_EXIT_LET_OUT, "refuse": DENYLISTED_EXIT_REFUSE}
_OVERDRAFT_TAPS = {"exit": OVERDRAFT_EXIT, "boarding": OVERDRAFT_BOARDING}


def _same_station_fare(rules: FareRules, category: RiderCategory) -> int:
    """The category's same-station fare: discounted when its discount holds on every entry/exit network
    (one fare serves them all; where it holds on only some, the full fare, never an undercharge)."""
    paid_networks = [k for k, v in rules.networks.items() if v.fare_collection == "entry_exit"]
    fare = rules.paid_area.same_station_fare_fen
    return category.discounted(fare) if all(category.discounts(k) for k in paid_networks) else fare


def _monthly_arrays(rules: FareRules, network_names: list[str]) -> dict[str, object]:
    """The monthly schemes as TableData's monthly_* arrays (see table_data.py)."""
    first, froms, percents = array("I", [0]), array("I"), bytearray()
    flags, networks = bytearray(), bytearray()
    for category in rules.rider_categories.values():
        scheme = category.scheme()
        if scheme is None:
            flags.append(0)
            networks.extend([MONTH_COUNTS | MONTH_DISCOUNTED] * len(network_names))
        else:
            by_rides = scheme.basis == "rides"
            for tier in scheme.tiers:
                froms.append((tier.from_rides if by_rides else tier.from_fen) or 0)
                percents.append(tier.percent_off)
            flags.append((MONTHLY_BY_RIDES if by_rides else 0)
                         | (MONTHLY_SURCHARGES_COUNT if scheme.surcharges_count else 0))
            counted = set(network_names if scheme.counted_networks is None else scheme.counted_networks)
            discounted = counted if scheme.discounted_networks is None else set(scheme.discounted_networks)
            networks.extend((MONTH_COUNTS if k in counted else 0)
                            | (MONTH_DISCOUNTED if k in discounted else 0) for k in network_names)
        first.append(len(froms))
    return {"monthly_tier_first": first, "monthly_tier_from": froms, "monthly_tier_percent": bytes(percents),
            "monthly_flags": bytes(flags), "monthly_networks": bytes(networks)}


def _offset_min(zone: zoneinfo.ZoneInfo, utc_seconds: int) -> int:
    offset = datetime.fromtimestamp(utc_seconds, zone).utcoffset()
    seconds = int(offset.total_seconds()) if offset is not None else 0
    if seconds % 60:
        raise ValueError(f"{zone.key}: a UTC offset of {seconds} s is not whole minutes")
    return seconds // 60


def utc_offsets(rules: FareRules) -> tuple[int, list[tuple[int, int]]]:
    """(offset in force at valid_from, [(UTC second, offset from then on)]) in minutes: the time zone's
    changes (summer time) from valid_from to valid_until, found a day at a time and each pinned to its
    second by bisection; a fixed utc_offset_min has none. After valid_until the last offset holds."""
    if rules.time_zone is None:
        return rules.utc_offset_min, []
    zone = zoneinfo.ZoneInfo(rules.time_zone)
    start = int(datetime.combine(parse_date(rules.valid_from), datetime.min.time(), UTC).timestamp())
    end = int(datetime.combine(parse_date(rules.valid_until), datetime.min.time(), UTC).timestamp())
    start, end = max(0, start), min(0xFFFFFFFF, end)
    base = current = _offset_min(zone, start)
    changes: list[tuple[int, int]] = []
    t = start
    while t < end:
        step = min(86400, end - t)
        after = _offset_min(zone, t + step)
        if after != current:
            lo, hi = t, t + step  # offset(lo) == current, offset(hi) == after
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset_min(zone, mid) == current:
                    lo = mid
                else:
                    hi = mid
            changes.append((hi, after))
            current = after
        t += step
    return base, changes


def date_overrides(rules: FareRules) -> list[tuple[int, int]]:
    """[(local date as days since 1970, weekday it is priced as)], by date."""
    epoch = date(1970, 1, 1)
    return sorted(((parse_date(day) - epoch).days, DAYS.index(calendar.price_as))
                  for calendar in rules.calendars for day in calendar.dates)


def _min_entry_balances(rules: FareRules, table: TableData) -> array[int]:
    """[category] fen needed to enter: the rules' minimum for the listed categories (by default every
    category the table charges anything), 0 for the others."""
    fen = rules.min_entry_balance_fen
    if rules.min_entry_categories is None:
        return minimum_for_paying_categories(table, fen)
    listed = set(rules.min_entry_categories)
    return array("I", (fen if name in listed else 0 for name in table.category_names))
