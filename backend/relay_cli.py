"""`faregate relay`: link station servers to the centre's NATS cluster, both ways (backend/relay.py).

One relay runs beside each station server; several `--station` URLs in one process serve several
(the city bench runs its twenty in one). Stops on SIGINT or SIGTERM; what a station delivered and the
stream did not yet acknowledge stays in that station's queue for the next start.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from .config import Settings
from .ingest.stream import split_urls
from .relay import RELAY_USER, StationRelay
from .runtime import install_stop_signals

STATIONS_ENV = "FAREGATE_RELAY_STATIONS"
NATS_ENV = "FAREGATE_RELAY_NATS"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--station", action="append", metavar="URL",
                        help=f"a station server: mqtt://{RELAY_USER}:PASSWORD@host:port (repeat for several; "
                        f"else {STATIONS_ENV}, comma-separated: the password off the command line)")
    parser.add_argument("--nats", metavar="URLS",
                        help="the cluster's nodes: nats://[user:password@]host:port[,...] (else "
                        f"{NATS_ENV})")
    parser.add_argument("--prefix", help="MQTT topic prefix (else FAREGATE_MQTT_PREFIX)")
    parser.add_argument("--replicas", type=int, default=3,
                        help="replicas of the stream if the relay is the first to make it (default 3)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stations = args.station or split_urls(os.environ.get(STATIONS_ENV, ""))
    nats_urls = args.nats or os.environ.get(NATS_ENV, "")
    if not stations or not nats_urls:
        print(f"faregate relay: give --station (or {STATIONS_ENV}) and --nats (or {NATS_ENV})")
        return 2
    try:
        settings = Settings(**({"mqtt_prefix": args.prefix} if args.prefix else {}))
        relays = [StationRelay(settings, url, nats_urls, replicas=args.replicas) for url in stations]
    except ValueError as error:
        print(f"faregate relay: configuration error: {error}")
        return 2
    asyncio.run(_serve(relays))
    return 0


async def _serve(relays: list[StationRelay]) -> None:
    stop = asyncio.Event()
    install_stop_signals(stop)
    for relay in relays:
        await relay.start()
    try:
        await stop.wait()
    finally:
        await asyncio.gather(*(relay.aclose() for relay in relays))
