"""Read a GTFS feed (a directory or a .zip) into rows that remember their file and line.

Every message about a feed names `file.txt:line`, so an operator finds the row at once; the reader
does no interpretation beyond CSV (UTF-8, an optional byte-order mark, surrounding spaces trimmed).
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

# The files the fare import reads; anything else in the feed is not looked at.
FARE_FILES = (
    "agency.txt",
    "feed_info.txt",
    "stops.txt",
    "routes.txt",
    "calendar.txt",
    "calendar_dates.txt",
    "networks.txt",
    "route_networks.txt",
    "areas.txt",
    "stop_areas.txt",
    "timeframes.txt",
    "rider_categories.txt",
    "fare_media.txt",
    "fare_products.txt",
    "fare_leg_rules.txt",
    "fare_leg_join_rules.txt",
    "fare_transfer_rules.txt",
)


class FeedError(ValueError):
    """The feed cannot be read at all (missing, not a feed, not UTF-8)."""


@dataclass(frozen=True)
class Row:
    """One CSV record: its values by column, and where it came from."""

    file: str
    line: int
    values: dict[str, str]

    def get(self, column: str) -> str:
        """The trimmed value of a column, "" when the column or the value is absent."""
        return self.values.get(column, "") or ""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


class Feed:
    """The fare-related files of one feed, each a list of rows (absent files are empty)."""

    def __init__(self, source: str, files: dict[str, list[Row]]) -> None:
        self.source = source
        self.files = files

    def rows(self, name: str) -> list[Row]:
        return self.files.get(name, [])

    def has(self, name: str) -> bool:
        return name in self.files


def _parse(name: str, text: str) -> list[Row]:
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    header: list[str] | None = None
    rows: list[Row] = []
    for record in reader:
        line = reader.line_num
        if header is None:
            header = [h.strip() for h in record]
            continue
        if not any(v.strip() for v in record):
            continue  # a blank line
        values = {column: (record[i].strip() if i < len(record) else "") for i, column in enumerate(header)}
        rows.append(Row(name, line, values))
    return rows


def read_feed(path: str | Path) -> Feed:
    """Read the fare-related files of a feed directory or zip; FeedError if it cannot be read."""
    path = Path(path)
    texts: dict[str, bytes] = {}
    if path.is_dir():
        for name in FARE_FILES:
            file = path / name
            if file.is_file():
                texts[name] = file.read_bytes()
    elif path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = {Path(m).name: m for m in archive.namelist() if not m.endswith("/")}
            for name in FARE_FILES:
                if name in members:
                    texts[name] = archive.read(members[name])
    elif path.exists():
        raise FeedError(f"{path}: not a directory or a zip file")
    else:
        raise FeedError(f"{path}: no such file or directory")
    if "fare_products.txt" not in texts or "fare_leg_rules.txt" not in texts:
        raise FeedError(
            f"{path}: no GTFS-Fares v2 here (fare_products.txt and fare_leg_rules.txt are needed)"
        )
    files: dict[str, list[Row]] = {}
    for name, data in texts.items():
        try:
            files[name] = _parse(name, data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise FeedError(f"{name}: not UTF-8 ({exc})") from None
        except csv.Error as exc:
            raise FeedError(f"{name}: not CSV ({exc})") from None
    return Feed(str(path), files)
