"""`faregate fares import-gtfs | export-gtfs`, and `show` pricing a trip by GTFS stop ids, through the
real CLI entry point with files on disk."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from fare_core.rules import load_rules
from faregate.cli import main

from .test_gtfs_import import FIXTURES, SMALL, write_feed


def compiled(tmp_path: Path, feed: Path) -> Path:
    rules = tmp_path / "rules.toml"
    assert main(["fares", "import-gtfs", str(feed), "-o", str(rules)]) == 0
    table = tmp_path / "table.fgt"
    assert main(["fares", "compile", str(rules), "--version", "3", "-o", str(table)]) == 0
    return table


def test_import_writes_rules_that_check_and_lists_what_is_lost(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "zk.toml"
    assert main(["fares", "import-gtfs", str(FIXTURES / "zakroczym"), "-o", str(rules)]) == 0
    out = capsys.readouterr().out
    assert "not enforceable: fare_products.txt:8: product 'monthly_normal'" in out
    assert out.rstrip().endswith("5 item(s) not enforceable")
    text = rules.read_text(encoding="utf-8")
    assert "#   rider_categories.txt:3: category '1'" in text  # the list travels with the rules
    assert load_rules(rules).name == "Komunikacja Gminna Zakroczym"
    assert main(["fares", "check", str(rules)]) == 0


def test_show_prices_a_trip_by_stop_ids_and_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = compiled(tmp_path, FIXTURES / "transcollines")
    capsys.readouterr()
    assert main(["fares", "show", str(table), "--from", "F101-60", "--to", "F401-10",
                 "--at", "2026-03-02T07:30"]) == 0
    assert "2000 fen" in capsys.readouterr().out  # Pontiac -> Gatineau, 20.00 CAD
    assert main(["fares", "show", str(table), "--from", "Route 148 | Terry-Fox", "--to", "411-56"]) == 0
    assert "500 fen" in capsys.readouterr().out  # a unique stop name works as well
    assert main(["fares", "show", str(table), "--from", "du Carrefour | 6e rang", "--to", "411-56"]) == 1
    err = capsys.readouterr().err
    assert "names 2 stations" in err and "[F401-10]" in err and "[F401-14]" in err


def test_show_takes_a_category_and_a_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = compiled(tmp_path, write_feed(tmp_path / "small", SMALL))
    capsys.readouterr()
    for args, fen in ((["--at", "2026-03-03T08:00"], 500), (["--at", "2026-03-03T11:00"], 400),
                      (["--at", "2026-03-03T11:00", "--category", "student"], 200)):
        assert main(["fares", "show", str(table), "--from", "S1", "--to", "S3", *args]) == 0
        assert f" {fen} fen" in capsys.readouterr().out, args


def test_import_reads_a_zip(tmp_path: Path) -> None:
    archive = tmp_path / "feed.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in (FIXTURES / "zakroczym").glob("*.txt"):
            zf.write(file, f"gtfs/{file.name}")
    out = tmp_path / "zk.json"
    assert main(["fares", "import-gtfs", str(archive), "-o", str(out)]) == 0
    assert load_rules(out).leg_rules[0].kind == "zones"


def test_import_of_a_broken_feed_names_every_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = dict(SMALL)
    broken["fare_leg_rules.txt"] += "\nm,tram,A,A,,in\nm,metro,Z,A,,in"
    out = tmp_path / "never.toml"
    assert main(["fares", "import-gtfs", str(write_feed(tmp_path / "b", broken)), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "  fare_leg_rules.txt:9: unknown network_id 'tram'" in err
    assert "  fare_leg_rules.txt:10: unknown from_area 'Z'" in err
    assert not out.exists()


def test_export_writes_a_feed_and_lists_what_gtfs_cannot_state(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    rules = Path(__file__).parents[2] / "fare_core" / "examples" / "tiny.toml"
    assert main(["fares", "export-gtfs", str(rules), "-o", str(tmp_path / "feed")]) == 0
    out = capsys.readouterr().out
    assert "not in GTFS: paid_area.overstay_surcharge_fen = 500: not GTFS fare data" in out
    assert (tmp_path / "feed" / "fare_leg_rules.txt").is_file()
    assert main(["fares", "import-gtfs", str(tmp_path / "feed"), "-o", str(tmp_path / "back.toml")]) == 0
    assert main(["fares", "check", str(tmp_path / "back.toml")]) == 0
