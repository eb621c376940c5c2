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

from protocol.mqtt import Verifier
from protocol.mqtt.auth import backend_public_keys

from .config import RelaySettings, Settings
from .ingest.stream import split_urls
from .relay import RELAY_USER, StationRelay
from .runtime import install_stop_signals

STATIONS_ENV = "FAREGATE_RELAY_STATIONS"
NATS_ENV = "FAREGATE_RELAY_NATS"
KEYS_ENV = "FAREGATE_RELAY_BACKEND_KEYS"


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
    parser.add_argument("--backend-key", action="append", metavar="HEX",
                        help="the backend's downlink public key, 64 hex digits (repeat during a key "
                        f"rotation; else {KEYS_ENV}, comma-separated); in development the development key")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stations = args.station or split_urls(os.environ.get(STATIONS_ENV, ""))
    nats_urls = args.nats or os.environ.get(NATS_ENV, "")
    if not stations or not nats_urls:
        print(f"faregate relay: give --station (or {STATIONS_ENV}) and --nats (or {NATS_ENV})")
        return 2
    try:
        settings, environment = relay_settings(args.prefix)
        verifier = _backend_keys(args.backend_key or split_urls(os.environ.get(KEYS_ENV, "")), environment)
        relays = [StationRelay(settings, url, nats_urls, replicas=args.replicas, verifier=verifier)
                  for url in stations]
    except ValueError as error:
        print(f"faregate relay: configuration error: {error}")
        return 2
    asyncio.run(_serve(relays))
    return 0


def relay_settings(prefix: str | None) -> tuple[Settings, str]:
    """The relay's settings (topic prefix, MQTT options; `RelaySettings`: none of the backend's secrets
    asked for) and its environment, which decides whether --backend-key is required."""
    settings = RelaySettings(mqtt_prefix=prefix) if prefix else RelaySettings()
    return settings, settings.environment


def _backend_keys(keys: list[str], environment: str) -> Verifier | None:
    """The backend's public keys a relay checks the state it hands down against. Outside development
    they must be given: a relay at a station holds no backend secret to derive them from (None: in
    development, the key of the signing seed in the settings, as the backend's own)."""
    if not keys:
        if environment != "development":
            raise ValueError(f"give the backend's downlink public key: --backend-key HEX or {KEYS_ENV}")
        logging.getLogger("faregate.relay").warning(
            "development: the state handed down is checked against the development signing key, whose "
            "seed is public; a deployment sets FAREGATE_ENVIRONMENT=production and --backend-key")
        return None
    try:  # the gates' own rule (gate/config.py): the development key refused in production
        return Verifier(backend_public_keys(keys, production=environment == "production"))
    except ValueError as error:
        raise ValueError(f"--backend-key: {error}") from None


async def _serve(relays: list[StationRelay]) -> None:
    stop = asyncio.Event()
    install_stop_signals(stop)
    for relay in relays:
        await relay.start()
    try:
        await stop.wait()
    finally:
        await asyncio.gather(*(relay.aclose() for relay in relays))
