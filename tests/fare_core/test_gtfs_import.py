"""GTFS-Fares v2 import on two published feeds (tests/fixtures/gtfs/*/README.md names source and licence):
the fares the agencies publish come out of decide() on both cores, and everything the gate cannot
enforce is listed with its file and line."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fare_core import Direction
from fare_core.compiler import compile_rules
from fare_core.gtfs import import_gtfs, read_feed
from fare_core.gtfs.feed import FeedError
from fare_core.gtfs.importer import GtfsImportError, ImportResult

from .test_decide import Rider

FIXTURES = Path(__file__).parents[1] / "fixtures" / "gtfs"
ENTRY, EXIT = Direction.ENTRY, Direction.EXIT


def imported(feed: str) -> ImportResult:
    return import_gtfs(read_feed(FIXTURES / feed))


def station(result: ImportResult, stop_id: str) -> int:
    """The station id a GTFS stop was given (its id rides in the name's brackets)."""
    return next(s.id for s in result.rules.stations if s.name.endswith(f" [{stop_id}]"))


def at(offset_min: int, *when: int) -> int:
    return int(datetime(*when, tzinfo=timezone(timedelta(minutes=offset_min))).timestamp())  # type: ignore[misc]


def local(zone: str, *when: int) -> int:
    """UTC seconds of a wall-clock time in the feed's agency_timezone (summer time included)."""
    return int(datetime(*when, tzinfo=ZoneInfo(zone)).timestamp())  # type: ignore[misc]


def fare(impl: Any, result: ImportResult, origin: str, dest: str, when: int, category: int = 0) -> int:
    """What decide() charges for one trip between two GTFS stops, on a fresh wallet."""
    table = compile_rules(result.rules, 1, 0)
    rider = Rider(impl, table, category=category, balance=50_000)
    out = rider.trip(station(result, origin), station(result, dest), when, when + 20 * 60)
    assert out.allowed, out
    return int(out.fare)


# --- Zakroczym (PLN, three zones, single rides bought on board; reduced fares only as monthly passes)


def test_zakroczym_fares_across_zones_as_published(impl: Any) -> None:
    result = imported("zakroczym")
    assert result.currency == "PLN"
    assert result.rules.time_zone == "Europe/Warsaw"
    tue = local("Europe/Warsaw", 2026, 3, 10, 9, 0)
    assert fare(impl, result, "100", "120", tue) == 500  # Zakroczym -> Nowy Dwór Mazowiecki, 5.00 PLN
    assert fare(impl, result, "120", "113-2", tue) == 500  # and back, from the other zone
    assert fare(impl, result, "117", "113", tue) == 400  # Modlin-Twierdza -> Zakroczym, 4.00 PLN
    assert fare(impl, result, "118", "121", tue) == 400  # Modlin-Twierdza -> Nowy Dwór Mazowiecki
    assert fare(impl, result, "100", "101", tue) == 0  # within the gmina of Zakroczym: free


def test_zakroczym_lists_what_the_gate_cannot_enforce() -> None:
    result = imported("zakroczym")
    assert list(result.rules.rider_categories) == ["0"]  # the default category, Bilet normalny
    network = result.rules.networks["default"]  # the feed names no network: one for its routes
    assert (network.mode, network.fare_collection) == ("bus", "entry_exit")  # zones: tap on and off
    lost = result.not_enforceable
    # summer time is enforced now (time_zone), so it is a note, not a loss
    assert not any("summer time" in x for x in lost)
    assert any(x.startswith("agency.txt:2: time zone Europe/Warsaw keeps summer time (UTC+02:00); the "
                            "table follows it") for x in result.notes), result.notes
    for line, category in ((3, "1"), (4, "2"), (5, "3")):
        assert any(x.startswith(f"rider_categories.txt:{line}: category {category!r}") and "monthly" not in x
                   for x in lost), lost
    assert any(x.startswith("fare_products.txt:8: product 'monthly_normal'") for x in lost)
    assert any(x.startswith("fare_products.txt:9: product 'monthly_discount'") for x in lost)
    assert len(lost) == 5, lost


# --- Transcollines (CAD, fares between three municipalities, a fare timeframe on a service calendar)


def test_transcollines_fares_between_municipalities_as_published(impl: Any) -> None:
    result = imported("transcollines")
    assert result.rules.time_zone == "America/Montreal"  # with its summer time
    monday = at(-300, 2026, 3, 2, 7, 30)
    assert fare(impl, result, "F101-60", "411-56", monday) == 500  # Pontiac -> Les Collines, 5.00 CAD
    assert fare(impl, result, "F101-60", "F401-10", monday) == 2000  # Pontiac -> Gatineau, 20.00 CAD
    assert fare(impl, result, "F411-13", "F103-07", monday) == 2000  # Gatineau -> Pontiac
    assert fare(impl, result, "411-58", "F401-14", monday) == 500  # Les Collines -> Gatineau
    assert fare(impl, result, "F103-06", "F103-07", monday) == 500  # within Pontiac
    sunday = at(-300, 2026, 3, 8, 23, 0)  # the fare timeframe holds every day of the week
    assert fare(impl, result, "F401-10", "411-60", sunday) == 500


def test_transcollines_lists_the_trip_it_does_not_sell_and_its_calendar() -> None:
    result = imported("transcollines")
    lost = result.not_enforceable
    assert not any("summer time" in x for x in lost)
    assert ("calendar.txt:2: service 'FARES-GT-2026-1' runs 20260105 to 20260823; the gate applies "
            "timeframe 'GT-2026' on those weekdays on every date") in lost
    assert any(x.startswith("fare_leg_rules.txt: no fare from area 'GAT' to 'GAT' on network 'REG'")
               and x.endswith("charges the highest fare from 'GAT', 2000") for x in lost)
    assert any(x.startswith("fare_products.txt:4: product 'PS-0'") for x in lost)
    assert len(lost) == 3, lost  # and a note that the table follows America/Montreal's summer time
    assert any(x.startswith("agency.txt:2: time zone America/Montreal keeps summer time")
               for x in result.notes), result.notes


def test_within_gatineau_is_charged_the_highest_fare_from_there(impl: Any) -> None:
    result = imported("transcollines")
    assert fare(impl, result, "F401-10", "F411-13", at(-300, 2026, 3, 2, 12, 0)) == 2000


# --- a feed written for the features the two published feeds do not use


def write_feed(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text.strip() + "\n", encoding="utf-8")
    return root


SMALL = {
    "agency.txt": "agency_id,agency_name,agency_url,agency_timezone\nx,Small City,https://x.invalid,Asia/Shanghai",
    "networks.txt": "network_id,network_name\nmetro,Metro\nbus,Buses",
    "routes.txt": "route_id,route_short_name,route_long_name,route_type,network_id\nM1,1,Line 1,1,metro\n"
                  "B7,7,Harbour,3,bus",
    "stops.txt": "stop_id,stop_name\nS1,Harbour\nS2,Old Town\nS3,Airport",
    "areas.txt": "area_id,area_name\nA,Centre\nB,Suburbs",
    "stop_areas.txt": "area_id,stop_id\nA,S1\nA,S2\nB,S3\nB,S2",
    "calendar.txt": "service_id,monday,tuesday,wednesday,thursday,friday,saturday,sunday,start_date,"
                    "end_date\nwk,1,1,1,1,1,0,0,20000101,20991231",
    "timeframes.txt": "timeframe_group_id,start_time,end_time,service_id\npeak,07:00:00,09:30:00,wk\n"
                      "peak,17:00:00,19:00:30,wk",
    "rider_categories.txt": "rider_category_id,rider_category_name,is_default_fare_category\nadult,Adult,1\n"
                            "student,Student,0",
    "fare_media.txt": "fare_media_id,fare_media_name,fare_media_type\ncash,Cash,0\ncard,Card,2",
    "fare_products.txt": "fare_product_id,fare_product_name,fare_media_id,rider_category_id,amount,currency\n"
                         "in,Inner,card,,2.00,CNY\nin,Inner,cash,,2.50,CNY\nout,Outer,card,,4.00,CNY\n"
                         "peak_out,Outer peak,card,,5.00,CNY\nout,Outer,card,student,2.00,CNY\n"
                         "bus,Bus,card,,1.00,CNY\nfree,Transfer,,,0.00,CNY\nday,Day pass,card,,15.00,CNY",
    "fare_leg_rules.txt": "leg_group_id,network_id,from_area_id,to_area_id,from_timeframe_group_id,"
                          "fare_product_id\nm,metro,A,A,,in\nm,metro,,,,out\nm,metro,A,B,peak,peak_out\n"
                          "m,metro,B,A,peak,peak_out\nm,metro,A,A,peak,in\nm,metro,B,B,peak,out\nb,bus,,,,bus",
    "fare_transfer_rules.txt": "from_leg_group_id,to_leg_group_id,transfer_count,duration_limit,"
                               "duration_limit_type,fare_transfer_type,fare_product_id\n"
                               "b,m,,5400,2,0,free\nm,b,,3600,1,0,free",
    "fare_leg_join_rules.txt": "from_network_id,to_network_id\nmetro,metro\nmetro,bus",
}


@pytest.fixture
def small(tmp_path: Path) -> ImportResult:
    return import_gtfs(read_feed(write_feed(tmp_path / "small", SMALL)))


def test_timeframes_categories_media_and_transfers(impl: Any, small: ImportResult) -> None:
    rules = small.rules
    assert list(rules.rider_categories) == ["adult", "student"]
    assert rules.band_names == ["outside_timeframes", "peak"]
    assert [(t.start, t.end, t.days) for t in rules.timeframes] == [
        ("07:00", "09:30", ["mon", "tue", "wed", "thu", "fri"]),
        ("17:00", "19:00", ["mon", "tue", "wed", "thu", "fri"])]
    assert [(t.from_network, t.to_network, t.window_min, t.discount_percent) for t in rules.transfer_rules] \
        == [("bus", "metro", 90, 100), ("metro", "bus", 60, 100)]
    off = at(480, 2026, 3, 3, 11, 0)  # a Tuesday
    peak = at(480, 2026, 3, 3, 8, 0)
    assert fare(impl, small, "S1", "S2", off) == 200  # both in the centre, on the card
    assert fare(impl, small, "S1", "S3", off) == 400  # centre -> suburbs
    assert fare(impl, small, "S1", "S3", peak) == 500
    assert fare(impl, small, "S3", "S3", peak) == 400  # no peak product of its own: outer
    # S2 is in areas A and B (stop_areas.txt): a boundary station, priced at the cheaper reading
    assert next(x.zones for x in rules.stations if x.name.endswith("[S2]")) == ["A", "B"]
    assert fare(impl, small, "S2", "S3", peak) == 400  # as B -> B (outer), not A -> B (peak outer, 500)
    assert fare(impl, small, "S1", "S2", peak) == 200  # as A -> A (inner)
    assert fare(impl, small, "S1", "S3", off, category=1) == 200  # the student's own product


def test_bus_then_metro_within_the_window_is_free(impl: Any, small: ImportResult) -> None:
    table = compile_rules(small.rules, 1, 0)
    rider = Rider(impl, table, balance=5_000)
    when = at(480, 2026, 3, 3, 11, 0)
    bus = next(s.id for s in small.rules.stations if s.network == "bus")
    boarded = rider.tap(bus, ENTRY, when)
    assert (boarded.allowed, boarded.fare) == (True, 100)
    out = rider.trip(station(small, "S1"), station(small, "S3"), when + 30 * 60, when + 50 * 60)
    assert (out.allowed, out.fare) == (True, 0)


def test_small_feed_lists_each_unenforceable_line(small: ImportResult) -> None:
    lost = small.not_enforceable
    expected = [
        "timeframes.txt:3: end_time 19:00:30: the gate counts whole minutes, 19:00",
        "fare_products.txt:3: product 'in' on medium 'cash' costs 2.50; the gate charges the card price, "
        "2.00",
        "fare_transfer_rules.txt:3: duration_limit_type 1: the gate measures from the end of one leg to the "
        "start of the next (type 2)",
        "fare_leg_join_rules.txt:3: legs joined across networks 'metro' -> 'bus': a station belongs to one "
        "network; each leg is priced alone",
        "fare_products.txt:9: product 'day' (Day pass, 15.00 CNY) is priced by no fare leg rule: passes and "
        "period products are not enforced",
    ]
    for line in expected:
        assert line in lost, (line, lost)
    assert not any("has no fare outside timeframes" in x for x in lost)  # unnamed-timeframe rows price it
    assert ("fare_leg_join_rules.txt:2: legs on network 'metro' join into one: a trip is priced from entry "
            "to exit already") in small.notes


def test_every_reference_error_is_named_with_its_line_in_one_pass(tmp_path: Path) -> None:
    broken = dict(SMALL)
    broken["fare_leg_rules.txt"] = SMALL["fare_leg_rules.txt"] + "\nm,tram,A,A,,in\nm,metro,Z,A,,in\n" \
                                                                 "m,metro,A,A,night,in\nm,metro,A,A,,nothing"
    broken["fare_products.txt"] = SMALL["fare_products.txt"] + "\nbad,Bad,card,,2.001,CNY\neur,E,card,,1,EUR"
    broken["stop_areas.txt"] = SMALL["stop_areas.txt"] + "\nA,S9"
    with pytest.raises(GtfsImportError) as caught:
        import_gtfs(read_feed(write_feed(tmp_path / "broken", broken)))
    assert caught.value.problems == [
        "stop_areas.txt:6: unknown stop_id 'S9'",
        "fare_products.txt:10: amount '2.001' has more decimals than CNY has",
        "fare_products.txt:11: currency EUR differs from CNY: one table, one currency",
        "fare_leg_rules.txt:9: unknown network_id 'tram'",
        "fare_leg_rules.txt:10: unknown from_area 'Z'",
        "fare_leg_rules.txt:11: unknown from_timeframe_group_id 'night'",
        "fare_leg_rules.txt:12: unknown fare_product_id 'nothing'",
    ]


def test_a_directory_without_fares_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FeedError, match="no GTFS-Fares v2 here"):
        read_feed(write_feed(tmp_path / "plain", {"stops.txt": "stop_id,stop_name\n1,One"}))
    with pytest.raises(FeedError, match="no such file"):
        read_feed(tmp_path / "missing")


# --- Transcollines in May 2024: two networks over the same stops, timeframes told apart only by dates


def on(result: ImportResult, stop_id: str, network: str) -> int:
    stations = result.rules.stations
    return next(s.id for s in stations if s.name.endswith(f" [{stop_id}]") and s.network == network)


def test_seasonal_timeframes_keep_the_first_and_list_the_rest(impl: Any) -> None:
    result = imported("transcollines-2024")
    table = compile_rules(result.rules, 1, 0)
    saturday_in_june = at(-300, 2024, 6, 8, 10, 0)  # 924-GRT: free summer weekends

    def ride(origin: str, dest: str, network: str, when: int) -> int:
        rider = Rider(impl, table, balance=50_000)
        out = rider.trip(on(result, origin, network), on(result, dest, network), when, when + 40 * 60)
        assert out.allowed, out
        return int(out.fare)

    assert ride("910001", "9154", "924", saturday_in_june) == 0  # route 924, Pontiac -> Gatineau: free
    assert ride("910001", "9154", "PLEIN-TARIF", saturday_in_june) == 2000  # the regular routes: 20.00
    assert ride("910101", "9155", "PLEIN-TARIF", saturday_in_june) == 500
    lost = result.not_enforceable
    for line, group in ((3, "924-PAY-1"), (4, "924-PAY-2")):
        assert (f"timeframes.txt:{line}: timeframe group {group!r} falls on minutes of the week '924-GRT' "
                f"already holds (only dates tell them apart); the gate prices them as '924-GRT', row not "
                f"imported") in lost
    for line in range(10, 26):  # the rows of the paying 924 periods, each named
        group = "924-PAY-1" if line < 18 else "924-PAY-2"
        assert (f"fare_leg_rules.txt:{line}: timeframe group {group!r} has no timeframe the gate can apply; "
                f"row not imported") in lost
    assert "calendar.txt:4: service '20240515-201-0000011' runs 20240518 to 20241027; the gate applies " \
           "timeframe '924-GRT' on those weekdays on every date" in lost
    holidays = [x for x in lost if x.startswith("calendar_dates.txt:")]
    assert len(holidays) == 5 and "calendar_dates.txt:3: service '20240515-201-0000011' added on 20240624: " \
           "timeframes follow weekdays, not dates" in holidays
