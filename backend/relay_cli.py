"""`faregate relay`: link station servers to the centre's NATS cluster, both ways (backend/relay.py).

One relay runs beside each station server; several `--station` URLs in one process serve several
(the city bench runs its twenty in one). Stops on SIGINT or SIGTERM; what a station delivered and the
stream did not yet acknowledge stays in that station's queue for the next start.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from .config import Settings
from .relay import RELAY_USER, StationRelay
from .runtime import install_stop_signals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--station", action="append", required=True, metavar="URL",
                        help=f"a station server: mqtt://{RELAY_USER}:PASSWORD@host:port (repeat for several)")
    parser.add_argument("--nats", required=True, metavar="URLS",
                        help="the cluster's nodes: nats://host:port[,nats://host:port...]")
    parser.add_argument("--prefix", help="MQTT topic prefix (else FAREGATE_MQTT_PREFIX)")
    parser.add_argument("--replicas", type=int, default=3,
                        help="replicas of the stream if the relay is the first to make it (default 3)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = Settings(**({"mqtt_prefix": args.prefix} if args.prefix else {}))
        relays = [StationRelay(settings, url, args.nats, replicas=args.replicas) for url in args.station]
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
