"""`faregate bench ingest` end to end on a small run: it counts what the database holds, nothing lost."""

from __future__ import annotations

import argparse
import asyncio

from faregate.bench.ingest import add_arguments, bench
from tests.backend.conftest import BrokerInfo, Database


async def test_bench_ingest_stores_every_tap_once(database: Database, broker: BrokerInfo) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--taps",
            "600",
            "--gates",
            "6",
            "--window",
            "20",
            "--no-baseline",
            "--timeout",
            "60",
            "--mqtt",
            broker.url,
            "--mqtt-version",
            broker.version,
            "--database",
            database.url,
        ]
    )
    result = await asyncio.to_thread(bench, args)
    assert (result["sent"], result["stored"], result["lost"], result["duplicated"]) == (600, 600, 0, 0)
    assert result["database"] == ("postgresql" if database.name == "postgres" else "sqlite")
    assert result["taps_per_s"] > 0
