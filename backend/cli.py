"""`faregate backend`: the REST API, the MQTT ingest and the ledger processor in one process.

Each part can be switched off, so a city runs several `--no-api` ingest workers on one shared
subscription beside API-only processes, while a station or a demo runs everything in one.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from .config import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="API listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    parser.add_argument("--no-api", action="store_true", help="run without the REST API")
    parser.add_argument("--no-ingest", action="store_true", help="run without the MQTT ingest")
    parser.add_argument(
        "--no-processor",
        action="store_true",
        help="do not build trips/ledger nor reconcile here (another process does)",
    )
    parser.add_argument("--database", help="database URL (else FAREGATE_DATABASE_URL / DATABASE_URL)")
    parser.add_argument("--mqtt", help="broker URL mqtt://[user:pass@]host:port (else FAREGATE_MQTT_URL)")
    parser.add_argument("--mqtt-version", choices=["5", "3.1.1"], help="MQTT protocol version")
    parser.add_argument("--prefix", help="MQTT topic prefix (else FAREGATE_MQTT_PREFIX)")
    parser.add_argument(
        "--embedded-broker",
        type=int,
        metavar="PORT",
        help="also run the embedded amqtt broker on 127.0.0.1:PORT and use it (MQTT 3.1.1)",
    )
    parser.add_argument(
        "--broker-credentials",
        type=Path,
        metavar="FILE",
        help="with --embedded-broker: `username password` lines of the gates that may log in (what "
        "python -m backend.deploy.mosquitto_config prints); the backend logs in as FAREGATE_MQTT_USERNAME "
        "(default faregate-backend) with FAREGATE_MQTT_PASSWORD (default: generated for the run)",
    )
    parser.add_argument(
        "--ingest-from",
        metavar="URLS",
        default=os.environ.get("FAREGATE_INGEST_FROM"),
        help="pull the gates' messages from a broker cluster's JetStream stream instead of the MQTT "
        "subscription: nats://[user:password@]host:port[,...] (docs/deployment.md, \"Central broker\"; "
        "else FAREGATE_INGEST_FROM, which keeps a password off the command line)",
    )
    parser.add_argument(
        "--ingest-downlink",
        metavar="URLS",
        help="with --ingest-from: the cluster's MQTT gateways the acks to the gates go through, "
        "mqtt://host:port[,...] (default: the --mqtt URL), or 'nats': plain NATS publishes on the "
        "worker's own connection, not retained and not stored by the cluster (docs/deployment.md)",
    )
    parser.add_argument(
        "--publish-nats",
        metavar="URLS",
        help="send the messages to the gates (deny-list, fare table, actions, commands) as NATS publishes "
        "on the cluster, nats://host:port[,...], for stations linked by `faregate relay` (default: with "
        "--ingest-downlink nats, the --ingest-from cluster; else through --mqtt)",
    )
    parser.add_argument(
        "--ingest-ack-wait",
        type=float,
        default=30.0,
        metavar="S",
        help="with --ingest-from: seconds before the cluster hands a message a worker took and did not "
        "acknowledge (a killed worker) to another worker (default 30)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if args.database:
        overrides["database_url"] = args.database
    if args.mqtt:
        overrides["mqtt_url"] = args.mqtt
    if args.mqtt_version:
        overrides["mqtt_version"] = args.mqtt_version
    if args.prefix:
        overrides["mqtt_prefix"] = args.prefix
    if args.publish_nats:
        overrides["publish_nats_url"] = args.publish_nats
    elif args.ingest_from and args.ingest_downlink == "nats":  # the whole downlink on one path
        overrides["publish_nats_url"] = args.ingest_from
    if args.embedded_broker:
        overrides.update(
            mqtt_url=f"mqtt://127.0.0.1:{args.embedded_broker}", mqtt_version="3.1.1", ingest_group=""
        )
    return Settings(**overrides)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    quiet = logging.DEBUG if args.log_level == "debug" else logging.WARNING
    # the embedded broker's state machine logs every step, and alembic 7 lines a start: debug only
    for chatty in ("transitions", "amqtt", "alembic"):
        logging.getLogger(chatty).setLevel(max(quiet, logging.getLogger().level))
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        print(f"faregate backend: configuration error: {error}")
        return 2
    accounts = None
    if args.embedded_broker:  # the broker's accounts and ACL; anonymous clients are refused
        from .deploy.accounts import BACKEND_USER, BrokerAccounts

        user, password = settings.mqtt_username or BACKEND_USER, settings.mqtt_password
        if args.broker_credentials:
            accounts = BrokerAccounts.read(args.broker_credentials, user, password)
        else:
            accounts = BrokerAccounts.generate([], user, password)
            print("faregate backend: no --broker-credentials: only the backend can log in to the broker")
        login = {"mqtt_username": accounts.backend_user, "mqtt_password": accounts.backend_password}
        settings = settings.model_copy(update=login)
    stream = None
    if args.ingest_from:
        from .ingest.stream import StreamSource, split_urls

        try:
            stream = StreamSource(args.ingest_from, split_urls(args.ingest_downlink or settings.mqtt_url),
                                  ack_wait_s=args.ingest_ack_wait)
        except ValueError as error:
            print(f"faregate backend: configuration error: {error}")
            return 2
    from .runtime import PortInUse, serve

    try:
        asyncio.run(
            serve(
                settings,
                api=not args.no_api,
                ingest=not args.no_ingest and settings.ingest,
                processor=not args.no_processor,
                host=args.host,
                port=args.port,
                embedded_broker_port=args.embedded_broker,
                embedded_broker_accounts=accounts,
                ingest_stream=stream,
            )
        )
    except PortInUse as error:
        print(f"faregate backend: {error.strerror}")
        return 3
    except KeyboardInterrupt:  # a second Ctrl-C while stopping: stop at once, without a traceback
        return 130
    return 0


if __name__ == "__main__":  # python -m backend.cli ...
    parser = argparse.ArgumentParser(prog="faregate backend")
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
