"""Import, export, import again gives the same rules and the same compiled table (issue #13 point 4);
rules GTFS cannot state are listed by the export, and what it can state keeps its fares."""

from __future__ import annotations

from pathlib import Path

import pytest

import fare_core
from fare_core.artefact import pack
from fare_core.compiler import compile_rules
from fare_core.gtfs import export_gtfs, import_gtfs, read_feed
from fare_core.rules import load_rules

from .test_gtfs_import import FIXTURES, SMALL, write_feed

EXAMPLES = Path(fare_core.__file__).parent / "examples"


@pytest.mark.parametrize("feed", ["zakroczym", "transcollines", "transcollines-2024", "small"])
def test_import_export_import_gives_the_same_compiled_table(feed: str, tmp_path: Path) -> None:
    source = write_feed(tmp_path / "small", SMALL) if feed == "small" else FIXTURES / feed
    first = import_gtfs(read_feed(source))
    lost = export_gtfs(first.rules, tmp_path / "out", first.currency)
    assert lost == []  # what came from GTFS goes back to GTFS whole
    second = import_gtfs(read_feed(tmp_path / "out"))
    assert second.rules == first.rules
    stamp = 1_700_000_000
    assert pack(compile_rules(second.rules, 7, stamp)) == pack(compile_rules(first.rules, 7, stamp))


def test_exported_feed_is_plain_gtfs(tmp_path: Path) -> None:
    first = import_gtfs(read_feed(FIXTURES / "transcollines"))
    export_gtfs(first.rules, tmp_path, first.currency)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "agency.txt", "areas.txt", "calendar.txt", "fare_leg_join_rules.txt", "fare_leg_rules.txt",
        "fare_media.txt", "fare_products.txt", "networks.txt", "rider_categories.txt", "route_networks.txt",
        "routes.txt", "stop_areas.txt", "stops.txt", "timeframes.txt"]
    legs = (tmp_path / "fare_leg_rules.txt").read_text(encoding="utf-8").splitlines()
    assert legs[0] == ("leg_group_id,network_id,from_area_id,to_area_id,from_timeframe_group_id,"
                       "fare_product_id")
    assert "REG,REG,PNT,GAT,GT-2026,fare_20_00" in legs
    assert "fare_20_00,,phone,,20.00,CAD" in (tmp_path / "fare_products.txt").read_text(encoding="utf-8")
    assert "GT-2026,00:00:00,24:00:00,days_mon_tue_wed_thu_fri_sat_sun" in (
        tmp_path / "timeframes.txt").read_text(encoding="utf-8")
    assert "operator,Transcollines,https://example.invalid/,America/Montreal" in (
        tmp_path / "agency.txt").read_text(encoding="utf-8")


def test_tiny_exports_its_fares_and_lists_the_rest(tmp_path: Path) -> None:
    rules = load_rules(EXAMPLES / "tiny.toml")
    lost = export_gtfs(rules, tmp_path)
    assert ("transfer_rules[1]: 0 fen and 50% off the next leg (bus -> metro): GTFS prices a transfer, not "
            "a discount on a leg whose fare varies; not written") in lost
    for expected in ("paid_area.max_inside_min = 240", "paid_area.overstay_surcharge_fen = 500",
                     "paid_area.same_station_window_min = 5", "paid_area.anti_passback_min = 10",
                     "min_entry_balance_fen = 200", "rider_categories.adult.daily_cap_fen = 1000",
                     "rider_categories.adult.monthly_threshold_fen", "networks.metro.edges"):
        assert any(line.startswith(expected) for line in lost), (expected, lost)
    again = import_gtfs(read_feed(tmp_path))
    before, after = compile_rules(rules, 1, 0), compile_rules(again.rules, 1, 0)
    assert after.band_names == before.band_names
    assert after.band_of_minute == before.band_of_minute
    assert after.category_names == before.category_names
    assert after.fares == before.fares  # the distance and OD fares, pair by pair, every band and category
    assert after.flat_fares == before.flat_fares
    # metro -> bus: 100 fen off a flat 200 fen bus is a transfer product of 100; written and read back
    assert list(after.transfer_discount) == list(before.transfer_discount)
    assert after.transfer_window_s[1] == before.transfer_window_s[1] == 90 * 60


FLAT = {
    "agency.txt": "agency_id,agency_name,agency_url,agency_timezone\nv,Valley Bus,https://v.invalid,Etc/GMT+5",
    "fare_products.txt": "fare_product_id,fare_product_name,amount,currency\nlocal,Local,0.50,USD\n"
                         "xfer,Transfer,0.00,USD",
    "fare_leg_rules.txt": "leg_group_id,network_id,fare_product_id\nlocal,,local",
    "fare_transfer_rules.txt": "from_leg_group_id,to_leg_group_id,transfer_count,duration_limit,"
                               "duration_limit_type,fare_transfer_type,fare_product_id\n,,-1,7200,2,0,xfer",
}


def test_a_flat_feed_without_networks_or_routes_round_trips(tmp_path: Path) -> None:
    first = import_gtfs(read_feed(write_feed(tmp_path / "flat", FLAT)))
    rules = first.rules
    stations = [(s.id, s.name, s.network) for s in rules.stations]
    assert stations == [(1, "Valley Bus (any vehicle) [any:default]", "default")]
    assert rules.networks["default"].fare_collection == "flat"
    transfers = [(t.from_network, t.to_network, t.window_min, t.discount_percent)
                 for t in rules.transfer_rules]
    assert transfers == [("default", "default", 120, 100)]  # empty leg groups: every group, here the one
    assert rules.max_transfers == 254  # transfer_count -1: as many as the card counts
    assert export_gtfs(rules, tmp_path / "out", first.currency) == []
    assert import_gtfs(read_feed(tmp_path / "out")).rules == rules
