"""`faregate fares check | compile | show`, driven through the real CLI entry point with files on disk."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path

import pytest

import fare_core
from fare_core.artefact import unpack
from faregate.cli import main

EXAMPLES = Path(fare_core.__file__).parent / "examples"
TINY = str(EXAMPLES / "tiny.toml")


@pytest.fixture
def compiled(tmp_path: Path) -> Path:
    out = tmp_path / "tiny.fgt"
    args = ["fares", "compile", TINY, "--version", "5", "-o", str(out), "--created-at", "1700000000"]
    assert main(args) == 0
    return out


def test_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fares", "check", str(EXAMPLES / "guangzhou.toml")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: Guangzhou Metro (slice): 79 stations, 2 networks, 4 categories, 2 time bands")


def test_check_reports_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with open(TINY, "rb") as file:
        data = tomllib.load(file)
    data["networks"]["metro"]["edges"][1]["distance_m"] = 0
    data["rider_categories"]["student"]["percent_off"] = 120
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data), encoding="utf-8")
    assert main(["fares", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "invalid fare rules" in err
    assert "networks.metro.edges[1].distance_m: must be > 0" in err
    assert "rider_categories.student.percent_off: must be <= 100" in err


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fares", "check", str(tmp_path / "nope.toml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_compile_writes_the_artefact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gz.fgt"
    gz = str(EXAMPLES / "guangzhou.toml")
    assert main(["fares", "compile", gz, "--version", "12", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    blob = out.read_bytes()
    table = unpack(blob)
    assert table.version == 12
    assert f"checksum  sha256:{hashlib.sha256(blob[:-32]).hexdigest()}" in printed
    assert f"size      {len(blob)} bytes" in printed
    assert "stations  79" in printed and "adult, student, senior, staff" in printed
    # the OD sample: Xilang (101) -> Huangsha (105) is 5,670 m -> 300 fen
    row = [line.split() for line in printed.splitlines() if line.split()[:1] == ["101"]][-1]  # not the header
    assert row == ["101", "200", "200", "200", "200", "300"]
    assert [p.name for p in tmp_path.iterdir()] == ["gz.fgt"]  # no temporary file left behind


def test_compile_bad_rules_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(Path(TINY).read_text(encoding="utf-8").replace("base_fen = 200", "base_fen = -200"),
                   encoding="utf-8")
    out = tmp_path / "out.fgt"
    assert main(["fares", "compile", str(bad), "--version", "1", "-o", str(out)]) == 1
    assert "leg_rules[0].base_fen: must be >= 0" in capsys.readouterr().err
    assert not out.exists()


def test_compile_bad_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.fgt"
    assert main(["fares", "compile", TINY, "--version", str(2**32), "-o", str(out)]) == 1
    assert "version" in capsys.readouterr().err
    assert not out.exists()


def test_compile_replaces_an_existing_table(compiled: Path) -> None:
    assert main(["fares", "compile", TINY, "--version", "6", "-o", str(compiled)]) == 0
    assert unpack(compiled.read_bytes()).version == 6


def test_show_summary(compiled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["fares", "show", str(compiled)]) == 0
    out = capsys.readouterr().out
    assert "tiny: version 5, created 1700000000 (2023-11-14T22:13:20+00:00)" in out
    assert f"sha256:{hashlib.sha256(compiled.read_bytes()[:-32]).hexdigest()}" in out
    assert "bands     offpeak, peak" in out
    assert ("min to enter (fen): adult 200, student 200, senior 0, staff 200; deny-listed phone at an exit "
            "with an open entry: let out, charged") in out


@pytest.mark.parametrize(("args", "expected"), [
    # Monday 2026-11-23, local (UTC+8) time unless an offset is given
    (["--from", "1", "--to", "3", "--at", "2026-11-23T07:29"], "1 -> 3  adult  offpeak  300 fen (¥3.00)"),
    (["--from", "1", "--to", "3", "--at", "2026-11-23T07:30"], "1 -> 3  adult  peak  400 fen (¥4.00)"),
    (["--from", "1", "--to", "3", "--at", "2026-11-22T23:30+00:00"], "1 -> 3  adult  peak  400 fen"),
    (["--from", "1", "--to", "3", "--at", "2026-11-23T07:30+00:00"], "1 -> 3  adult  offpeak  300 fen"),
    (["--from", "Alpha", "--to", "Delta", "--category", "student", "--at", "2026-11-23T12:00"],
     "1 -> 4  student  offpeak  200 fen (¥2.00)"),
    (["--from", "4", "--to", "1", "--category", "senior", "--at", "2026-11-23T08:00"],
     "4 -> 1  senior  peak  0 fen"),
    (["--from", "2", "--category", "staff", "--at", "2026-11-28T08:00"], "2 -> 2  staff  offpeak  50 fen"),
    (["--from", "50", "--category", "student", "--at", "2026-11-23T12:00"],
     "boarding 50 (bus)  student  offpeak  100 fen (¥1.00)"),
])
def test_show_one_fare(compiled: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                       expected: str) -> None:
    capsys.readouterr()
    assert main(["fares", "show", str(compiled), *args]) == 0
    assert capsys.readouterr().out.strip().startswith(expected)


def test_show_now_by_default(compiled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["fares", "show", str(compiled), "--from", "1", "--to", "2"]) == 0
    assert "1 -> 2  adult" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "expected"), [
    (["--from", "99", "--to", "1"], "no station '99'"),
    (["--from", "1", "--to", "Nowhere"], "no station 'Nowhere'"),
    (["--to", "1"], "--to needs --from"),
    (["--from", "1", "--to", "50"], "stations 1 and 50 are on different networks"),
    (["--from", "1", "--category", "child"], "no category 'child' (known: adult, student, senior, staff)"),
    (["--from", "1", "--at", "yesterday"], "is not an ISO 8601 time"),
])
def test_show_bad_questions(compiled: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                            expected: str) -> None:
    capsys.readouterr()
    assert main(["fares", "show", str(compiled), *args]) == 1
    assert expected in capsys.readouterr().err


def test_show_refuses_a_corrupt_table(compiled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blob = bytearray(compiled.read_bytes())
    blob[100] ^= 0x10
    compiled.write_bytes(bytes(blob))
    assert main(["fares", "show", str(compiled)]) == 1
    assert "checksum mismatch" in capsys.readouterr().err
    compiled.write_bytes(bytes(blob[:50]))
    assert main(["fares", "show", str(compiled)]) == 1
    assert "truncated" in capsys.readouterr().err


def test_show_missing_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fares", "show", str(tmp_path / "none.fgt")]) == 1
    assert "none.fgt" in capsys.readouterr().err


def test_action_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["fares"])
    assert info.value.code == 2


def test_schema_validates_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    import jsonschema

    assert main(["fares", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    with open(EXAMPLES / "guangzhou.toml", "rb") as file:
        jsonschema.validate(tomllib.load(file), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "x"}, schema)  # no networks, stations, categories or leg rules


# --- `fares check`: one pass, located, hints, warnings, exit codes ---

TINY_TEXT = (EXAMPLES / "tiny.toml").read_text(encoding="utf-8")


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _line_number(text: str, fragment: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if line.strip() == fragment)


def test_check_lists_each_problem_at_its_line_with_hints(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    text = (TINY_TEXT.replace("base_fen = 250", "base_fen = 2.5")
            .replace("window_min = 90\ndiscount_fen = 100", "window_min = 90\ndiscount_fen = 100\nwindow = 3")
            .replace("overstay_surcharge_fen = 500", "overstay_surcharge_fen = 5"))
    bad = _write(tmp_path, "bad.toml", text)
    assert main(["fares", "check", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    fare_line = _line_number(text, "base_fen = 2.5")
    extra_line = _line_number(text, "window = 3")
    surcharge_line = _line_number(text, "overstay_surcharge_fen = 5")
    assert captured.err.splitlines() == [
        f"{bad}:{fare_line}:1: leg_rules[1].base_fen: must be an integer",
        "  hint: fen are integers; ¥3.00 is 300; if 2.5 is yuan, write 250",
        f"{bad}:{extra_line}:1: transfer_rules[0].window: unknown field",
        "  hint: did you mean 'window_min'?",
        f"{bad}:{surcharge_line}:1: warning: paid_area.overstay_surcharge_fen: 5 fen is ¥0.05: looks like "
        "yuan typed as fen (a fare under ¥0.10)",
        "  hint: fen are integers; ¥3.00 is 300; if ¥5 was meant, write 500",
        f"{bad}: invalid fare rules: 2 errors, 1 warning",
    ]


def test_check_warnings_alone_exit_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = TINY_TEXT.replace("base_fen = 200", "base_fen = 3")  # yuan typed as fen
    rules = _write(tmp_path, "yuan.toml", text)
    assert main(["fares", "check", str(rules)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("ok: tiny: 5 stations") and "(0 errors, 1 warning)" in captured.out
    line = _line_number(text, "base_fen = 3")
    assert captured.err.startswith(f"{rules}:{line}:1: warning: leg_rules[0].base_fen: 3 fen is ¥0.03")
    out = tmp_path / "yuan.fgt"
    assert main(["fares", "compile", str(rules), "--version", "1", "-o", str(out)]) == 0  # compiles...
    assert "warning: leg_rules[0].base_fen" in capsys.readouterr().err  # ...and says so again


def test_check_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = TINY_TEXT.replace('{ id = 4, name = "Delta"', '{ id = 3, name = "Delta"')
    bad = _write(tmp_path, "dup.toml", text)
    ok = str(EXAMPLES / "tiny.toml")
    assert main(["fares", "check", "--json", ok, str(bad)]) == 1
    found = json.loads(capsys.readouterr().out)
    assert found[0] == {"file": str(bad), "line": _line_number(text, '{ id = 3, name = "Delta", network = '
                                                                   '"metro", lines = ["1"] },'),
                        "column": 5, "location": "stations[3].id",
                        "message": "duplicate station id 3 (also stations[2])",
                        "hint": "every station needs an id of its own", "severity": "error"}
    assert all(set(p) == {"file", "line", "column", "location", "message", "hint", "severity"} for p in found)
    assert [p["line"] for p in found] == sorted(p["line"] for p in found)
    assert main(["fares", "check", "--json", ok]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_check_the_examples_together_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    examples = sorted(str(p) for p in EXAMPLES.glob("*.toml"))
    assert main(["fares", "check", *examples]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert [line.split(": ok: ")[0] for line in captured.out.splitlines()] == examples


def test_check_a_file_that_does_not_parse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(tmp_path, "broken.toml", 'name = "x"\nstations = [\n  { id = 1 name = "y" }\n]\n')
    assert main(["fares", "check", str(bad)]) == 1
    assert capsys.readouterr().err.startswith(f"{bad}:3:")


def test_check_help_states_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fares", "check", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "warnings alone leave it 0" in text and "--json" in text
