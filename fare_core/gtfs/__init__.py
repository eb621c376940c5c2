"""GTFS-Fares v2 in and out of the fare-rule format (issue #13 point 3).

- feed.py reads a feed (a directory or a zip) into rows that keep their file and line;
- importer.py turns the fare files into FareRules plus a report of everything the gate cannot enforce;
- exporter.py writes FareRules back as GTFS-Fares v2 files, listing what GTFS cannot state;
- toml_out.py writes the imported rules as a TOML file the compiler reads.
"""

from fare_core.gtfs.exporter import export_gtfs
from fare_core.gtfs.feed import Feed, FeedError, Row, read_feed
from fare_core.gtfs.importer import ImportResult, import_gtfs

__all__ = ["Feed", "FeedError", "ImportResult", "Row", "export_gtfs", "import_gtfs", "read_feed"]
