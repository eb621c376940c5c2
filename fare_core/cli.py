"""`faregate fares`: check fare rules, compile them into a table artefact, and inspect an artefact.

    faregate fares check RULES.toml [MORE.toml ...] [--json]
    faregate fares compile RULES.toml --version 7 -o table.fgt
    faregate fares show table.fgt [--from 101 --to 116 --category adult --at 2026-11-23T08:00]
    faregate fares schema            (the rules' JSON Schema, for an editor or another validator)
    faregate fares import-gtfs FEED_DIR_OR_ZIP -o rules.toml   (GTFS-Fares v2 in; the unenforceable listed)
    faregate fares export-gtfs rules.toml -o DIR [--currency CNY]   (GTFS-Fares v2 out; the unstatable listed)

Exit status 0 on success, 1 when the rules or the artefact are bad (the reasons go to stderr), so a
publishing script can stop before a broken table reaches a gate. Warnings (a fare that looks like yuan
typed as fen, overlapping rows of one time band) are printed but leave the exit status 0.

`check` lists every problem of a file in one pass, sorted by line, one line each:
`FILE:LINE:COL: location: why` (`FILE:LINE:COL: warning: location: why` for a warning), followed by
`  hint: ...` where one helps; `--json` prints them instead as a list of {file, line, column, location,
message, hint, severity}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fare_core.artefact import checksum_of, pack, unpack
from fare_core.compiler import band_at, compile_rules, fare_index
from fare_core.errors import FareTableError
from fare_core.gtfs import export_gtfs, import_gtfs, read_feed
from fare_core.gtfs.importer import GtfsImportError
from fare_core.gtfs.toml_out import to_toml
from fare_core.rules import Draft, FareRules, Outcome, RulesError, read_file, validate_text
from fare_core.rules_advice import check_text
from fare_core.rules_problem import Problem
from fare_core.table_data import DENYLISTED_EXIT_REFUSE, TableData


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="fares_command", required=True, metavar="ACTION")
    check = sub.add_parser(
        "check", help="validate rules files and list every problem",
        description="List every error and warning of each rules file in one pass, sorted by line: "
                    "FILE:LINE:COL: location: why, with a hint line where one helps.",
        epilog="exit status: 0 when no file has an error (warnings alone leave it 0), 1 when any file "
               "has an error or cannot be read")
    check.add_argument("rules", type=Path, nargs="+", help="rules files (.toml or .json)")
    check.add_argument("--json", action="store_true",
                       help="print a JSON list of {file, line, column, location, message, hint, severity}")
    comp = sub.add_parser("compile", help="compile a rules file into a fare table artefact")
    comp.add_argument("rules", type=Path, help="rules file (.toml or .json)")
    comp.add_argument("--version", type=int, required=True, help="table version (u32, higher wins)")
    comp.add_argument("-o", "--output", type=Path, required=True, help="artefact file to write (.fgt)")
    comp.add_argument("--created-at", type=int, default=None, help="UTC seconds to stamp (default: now)")
    sub.add_parser("schema", help="print the JSON Schema of the rules (for editors and validators)")
    show = sub.add_parser("show", help="summarise a fare table artefact, or print one fare")
    show.add_argument("table", type=Path, help="artefact file (.fgt)")
    show.add_argument("--from", dest="origin", help="entry station: GTFS stop id, operator id or exact name")
    show.add_argument("--to", dest="dest", help="exit station: GTFS stop id, operator id or exact name")
    show.add_argument("--category", default=None, help="rider category (default: the first one)")
    show.add_argument("--at", default=None,
                      help="entry time, ISO 8601; without a UTC offset it is the table's local time "
                           "(default: now)")
    _add_gtfs_arguments(sub)


def _add_gtfs_arguments(sub: Any) -> None:
    imp = sub.add_parser("import-gtfs", help="read a GTFS-Fares v2 feed into a rules file",
                         description="Read the fare files of a GTFS feed (a directory or a zip) and write "
                                     "rules the compiler takes; everything the gate cannot enforce is listed "
                                     "line by line (and kept as comments at the top of the rules file).")
    imp.add_argument("feed", type=Path, help="GTFS feed: a directory or a .zip")
    imp.add_argument("-o", "--output", type=Path, required=True, help="rules file to write (.toml or .json)")
    exp = sub.add_parser("export-gtfs", help="write a rules file as GTFS-Fares v2 files",
                         description="Write the rules as GTFS-Fares v2 files where GTFS can express them; "
                                     "every rule it cannot is listed.")
    exp.add_argument("rules", type=Path, help="rules file (.toml or .json)")
    exp.add_argument("-o", "--output", type=Path, required=True,
                     help="directory to write the feed files into")
    exp.add_argument("--currency", default="CNY",
                     help="ISO 4217 currency of the amounts (default CNY: fen are its minor unit)")


def _import_gtfs(args: argparse.Namespace) -> int:
    try:
        result = import_gtfs(read_feed(args.feed))
    except (GtfsImportError, ValueError) as exc:
        print(f"{args.feed}: cannot import:", file=sys.stderr)
        for line in getattr(exc, "problems", None) or str(exc).splitlines():
            print(f"  {line}", file=sys.stderr)
        return 1
    if args.output.suffix.lower() == ".json":
        text = json.dumps(result.data, indent=2, ensure_ascii=False) + "\n"
    else:
        header = [f"Imported from the GTFS-Fares v2 feed {args.feed} by `faregate fares import-gtfs`.",
                  f"Money in minor units of {result.currency or 'the feed currency'}.", ""]
        header += ["Not enforceable by the gate (as imported):"]
        header += [f"  {line}" for line in result.not_enforceable]
        text = to_toml(result.data, header)
    args.output.write_text(text, encoding="utf-8")
    for note in result.notes:
        print(f"note: {note}")
    for line in result.not_enforceable:
        print(f"not enforceable: {line}")
    print(f"wrote {args.output}: {_summary(result.rules)}; "
          f"{len(result.not_enforceable)} item(s) not enforceable")
    return 0


def _export_gtfs(args: argparse.Namespace) -> int:
    outcome = validate_text(*read_file(args.rules))
    if outcome.rules is None:
        raise RulesError(outcome.problems)
    lost = export_gtfs(outcome.rules, args.output, args.currency)
    for line in lost:
        print(f"not in GTFS: {line}")
    print(f"wrote {args.output}/: {_summary(outcome.rules)}; {len(lost)} rule(s) GTFS cannot state")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        if args.fares_command == "check":
            return _check(args)
        if args.fares_command == "compile":
            return _compile(args)
        if args.fares_command == "import-gtfs":
            return _import_gtfs(args)
        if args.fares_command == "export-gtfs":
            return _export_gtfs(args)
        if args.fares_command == "schema":
            print(json.dumps(FareRules.model_json_schema(by_alias=True), indent=2, ensure_ascii=False))
            return 0
        return _show(args)
    except RulesError as exc:
        print(f"{getattr(args, 'rules', '')}: invalid fare rules:", file=sys.stderr)
        _print_problems(str(getattr(args, "rules", "")), exc.issues)
        return 1
    except (FareTableError, _UsageError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


class _UsageError(Exception):
    pass


def _summary(rules: FareRules) -> str:
    return (f"{rules.name}: {len(rules.stations)} stations, {len(rules.networks)} networks, "
            f"{len(rules.rider_categories)} categories, {len(rules.band_names)} time bands, "
            f"{len(rules.leg_rules)} leg rules, {len(rules.transfer_rules)} transfer rules")


def _format(file: str, problem: Problem) -> str:
    """FILE:LINE:COL: [warning: ]location: why, and an indented hint line where there is one."""
    where = file if problem.line is None else f"{file}:{problem.line}:{problem.column}"
    if problem.line is None and problem.message.startswith(f"{file}: "):
        where, problem = file, replace(problem, message=problem.message.removeprefix(f"{file}: "))
    label = "warning: " if problem.severity == "warning" else ""
    text = f"{where}: {label}{problem.location + ': ' if problem.location else ''}{problem.message}"
    return text + (f"\n  hint: {problem.hint}" if problem.hint else "")


def _print_problems(file: str, problems: list[Problem]) -> None:
    for problem in problems:
        print(_format(file, problem), file=sys.stderr)


def _counted(problems: list[Problem]) -> str:
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    return (f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}")


def _outcome(path: Path) -> Outcome:
    """The file validated in one pass; a file that cannot be read or parsed is one located problem."""
    try:
        return check_text(*read_file(path))
    except RulesError as exc:
        return Outcome(None, exc.issues, None, Draft({}))


def _check(args: argparse.Namespace) -> int:
    failed = False
    found: list[dict[str, object]] = []
    for path in args.rules:
        file = str(path)
        outcome = _outcome(path)
        failed |= outcome.rules is None
        if args.json:
            found += [p.as_dict(file) for p in outcome.problems]
            continue
        _print_problems(file, outcome.problems)
        prefix = f"{file}: " if len(args.rules) > 1 else ""
        if outcome.rules is None:
            print(f"{file}: invalid fare rules: {_counted(outcome.problems)}", file=sys.stderr)
        else:
            warned = f" ({_counted(outcome.problems)})" if outcome.problems else ""
            print(f"{prefix}ok: {_summary(outcome.rules)}{warned}")
    if args.json:
        print(json.dumps(found, indent=2, ensure_ascii=False))
    return 1 if failed else 0


def _compile(args: argparse.Namespace) -> int:
    outcome = check_text(*read_file(args.rules))
    if outcome.rules is None:
        raise RulesError(outcome.problems)
    _print_problems(str(args.rules), outcome.problems)  # warnings: they do not stop the compile
    rules = outcome.rules
    try:
        table = compile_rules(rules, args.version, args.created_at)
    except (ValueError, OverflowError) as exc:
        raise _UsageError(f"cannot compile {args.rules}: {exc}") from None
    blob = pack(table)
    _write_atomically(args.output, blob)
    print(f"wrote {args.output}")
    print(f"version   {table.version}")
    print(f"checksum  sha256:{checksum_of(blob)}")
    print(f"size      {len(blob)} bytes")
    print(_dimensions(table))
    print("sample (adult, first band, fen):")
    print(_sample(table))
    return 0


def _write_atomically(path: Path, blob: bytes) -> None:
    """Write next to the target and rename, so a gate never reads half a table."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(blob)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _dimensions(table: TableData) -> str:
    return (f"stations  {table.n_stations}  networks {', '.join(table.network_names)}\n"
            f"categories {', '.join(table.category_names)}\n"
            f"bands     {', '.join(table.band_names)}")


def _station_names(table: TableData) -> dict[int, str]:
    try:
        names = json.loads(table.extra.get("station_names", "{}"))
        return {int(k): str(v) for k, v in names.items()}
    except (ValueError, AttributeError):
        return {}


def _sample(table: TableData, size: int = 5) -> str:
    """A small OD matrix: the first stations of the first entry/exit network."""
    flat = set(i for i, f in enumerate(table.network_flat) if f)
    picks = [i for i in range(table.n_stations) if table.station_network[i] not in flat][:size]
    width = max([6, *(len(str(table.station_ids[i])) + 1 for i in picks)])
    lines = [" " * width + "".join(f"{table.station_ids[j]:>{width}}" for j in picks)]
    for i in picks:
        cells = "".join(f"{table.fares[fare_index(table, 0, 0, i, j)]:>{width}}" for j in picks)
        lines.append(f"{table.station_ids[i]:>{width}}{cells}")
    return "\n".join(lines)


def _station_index(table: TableData, text: str) -> int:
    """A station by GTFS stop id (the "[id]" an imported name ends with), operator id or name."""
    ids = list(table.station_ids)
    names = _station_names(table)
    for station_id, name in names.items():
        if name.endswith(f" [{text}]"):
            return ids.index(station_id)
    if text.isdigit() and int(text) in ids:
        return ids.index(int(text))
    for station_id, name in names.items():
        if name == text:
            return ids.index(station_id)
    bare = [(sid, name) for sid, name in names.items() if name.rsplit(" [", 1)[0] == text]
    if len(bare) > 1:
        listed = ", ".join(name for _, name in bare)
        raise _UsageError(f"{text!r} names {len(bare)} stations ({listed}): give a stop id or a station id")
    if bare:
        return ids.index(bare[0][0])
    for station_id, name in names.items():
        if name.split(" ")[0] == text:
            return ids.index(station_id)
    raise _UsageError(f"no station {text!r} in this table")


def _utc_seconds(text: str | None, table: TableData) -> int:
    if text is None:
        return int(datetime.now(UTC).timestamp())
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _UsageError(f"--at {text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:  # local time: the table's zone (summer time included), else its offset
        zone = table.extra.get("time_zone")
        if zone is not None:
            return int(moment.replace(tzinfo=ZoneInfo(zone)).timestamp())
        moment = moment.replace(tzinfo=timezone(timedelta(minutes=table.utc_offset_min)))
    return int(moment.timestamp())


def _show(args: argparse.Namespace) -> int:
    blob = args.table.read_bytes()
    table = unpack(blob)
    if args.origin is None and args.dest is None:
        print(f"{table.name}: version {table.version}, created {table.created_at} "
              f"({datetime.fromtimestamp(table.created_at, UTC).isoformat()})")
        print(f"checksum  sha256:{checksum_of(blob)}")
        print(f"size      {len(blob)} bytes")
        print(_dimensions(table))
        zone = table.extra.get("time_zone")
        where = (f"time zone {zone} ({len(table.offset_change_at)} offset changes compiled)" if zone
                 else f"utc offset {table.utc_offset_min} min")
        print(f"{where}, service day from {table.day_start_min // 60:02d}:"
              f"{table.day_start_min % 60:02d}, month from {table.month_start_min // 60:02d}:"
              f"{table.month_start_min % 60:02d}; max balance {table.max_balance} fen")
        pairs = zip(table.category_names, table.min_entry_balance, strict=True)
        minimums = ", ".join(f"{name} {fen}" for name, fen in pairs)
        print(f"min to enter (fen): {minimums}; deny-listed phone at an exit with an open entry: "
              f"{'refused' if table.denylisted_exit == DENYLISTED_EXIT_REFUSE else 'let out, charged'}")
        print("sample (adult, first band, fen):")
        print(_sample(table))
        return 0
    if args.origin is None:
        raise _UsageError("--to needs --from")
    origin = _station_index(table, args.origin)
    dest = origin if args.dest is None else _station_index(table, args.dest)
    category_name = args.category or table.category_names[0]
    if category_name not in table.category_names:
        raise _UsageError(f"no category {category_name!r} (known: {', '.join(table.category_names)})")
    category = table.category_names.index(category_name)
    band = band_at(table, _utc_seconds(args.at, table))
    network = table.station_network[origin]
    if table.network_flat[network]:
        fare = table.flat_fares[(band * table.n_categories + category) * table.n_networks + network]
        trip = f"boarding {table.station_ids[origin]} ({table.network_names[network]})"
    else:
        if table.station_network[dest] != network:
            raise _UsageError(f"stations {table.station_ids[origin]} and {table.station_ids[dest]} are on "
                              f"different networks: no trip between them")
        fare = table.fares[fare_index(table, band, category, origin, dest)]
        trip = f"{table.station_ids[origin]} -> {table.station_ids[dest]}"
    print(f"{trip}  {category_name}  {table.band_names[band]}  {fare} fen (¥{fare // 100}.{fare % 100:02d})")
    return 0
