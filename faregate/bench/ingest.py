"""`faregate bench ingest`: taps per second from simulated gates through a real broker into the database.

The simulated gates behave like real ones: each keeps at most `--window` taps not yet confirmed by the
backend's "committed through seq N" message (the end-to-end ack; PUBACKs alone would let a broker
queue limit drop taps), answers resend requests, and republishes after a stall. The ingest runs in its
own process (as in production). At the end the database is counted: stored, lost (sent but not
stored), duplicated (stored more than once). A baseline measured in the same run — raw paho QoS 1
publish -> subscribe through the same broker, no database — says how much of the broker's speed the
ingest keeps.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from backend.config import Settings
from backend.mqtt import BrokerAddress
from faregate.city.launch import port_open
from faregate.simgate import SimGate, SimUplink, tap_payload
from protocol.mqtt import MAX_TAPS_PER_MESSAGE, Topics, encode_taps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--taps", type=int, default=100_000, help="taps to send (default 100000)")
    parser.add_argument("--gates", type=int, default=50, help="simulated gates (default 50)")
    parser.add_argument(
        "--window", type=int, default=200, help="uncommitted taps a gate may have in flight (default 200)"
    )
    parser.add_argument(
        "--mqtt",
        help="broker URL (default: Mosquitto on 127.0.0.1:1883 if it runs, else the embedded amqtt broker)",
    )
    parser.add_argument("--mqtt-version", choices=["5", "3.1.1"], help="default: 5, 3.1.1 for amqtt")
    parser.add_argument("--database", help="database URL (default: a new SQLite file in a temp dir)")
    parser.add_argument(
        "--gate-mqtt-version",
        choices=["5", "3.1.1"],
        default="5",
        help="protocol the simulated gates speak (default 5; with 3.1.1 Mosquitto's max_inflight_messages "
        "throttles the Committed acks to each gate client)",
    )
    parser.add_argument("--batch", type=int, default=2000, help="ingest batch size (default 2000)")
    parser.add_argument(
        "--tap-batch",
        type=int,
        default=50,
        help="taps a simulated gate puts in one message when it has several to send, as a gate's uplink "
        "does with its backlog (default 50, the gate's default; 1 = one message per tap, the shape of "
        f"live traffic; at most {MAX_TAPS_PER_MESSAGE})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="ingest worker processes on the shared subscription (default 1)",
    )
    parser.add_argument(
        "--publishers", type=int, default=1, help="processes simulating the gates (default 1)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the raw broker baseline")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _client(url: str, version: str, client_id: str) -> tuple[mqtt.Client, BrokerAddress]:
    address = BrokerAddress.parse(url)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311,
    )
    if address.username:
        client.username_pw_set(address.username, address.password)
    return client, address


# --- processes ---------------------------------------------------------------------------------------


def _ingest_process(settings_values: dict[str, Any], stop: Any, ready: Any, cpu: Any) -> None:
    """Child process: one ingest worker, until `stop` is set; `cpu` gets the CPU seconds it used
    from ready to stop (its own threads included: aiosqlite's, for one)."""
    from backend.db import make_engine, make_sessionmaker
    from backend.ingest.worker import IngestWorker

    settings = Settings(**settings_values)

    async def main() -> None:
        engine = make_engine(settings)
        worker = IngestWorker(settings, make_sessionmaker(engine))
        stopped = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.1)
            stopped.set()

        watcher = asyncio.create_task(watch())
        runner = asyncio.create_task(worker.run(stopped))
        await worker.connected.wait()
        await asyncio.sleep(0.3)
        started = time.process_time()
        ready.set()
        await runner
        cpu.value = time.process_time() - started
        watcher.cancel()
        await engine.dispose()

    asyncio.run(main())


def _baseline_subscriber(url: str, version: str, topic: str, count: Any, ready: Any, stop: Any) -> None:
    client, address = _client(url, version, f"bench-sub-{uuid.uuid4().hex[:8]}")

    def on_connect(c: mqtt.Client, *_: Any) -> None:
        c.subscribe(topic, qos=1)

    def on_message(*_: Any) -> None:
        with count.get_lock():
            count.value += 1

    client.on_connect = on_connect
    client.on_subscribe = lambda *_: ready.set()
    client.on_message = on_message
    client.connect(address.host, address.port)
    while not stop.is_set():  # one thread: paho's loop here, not in a second thread
        client.loop(0.05)
    client.disconnect()


def _publisher_process(
    url: str,
    version: str,
    prefix: str,
    first: int,
    gates: int,
    per_gate: int,
    window: int,
    tap_batch: int,
    timeout: float,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    """Child process: some of the simulated gates on one client (payloads built before the clock starts)."""
    sims = [
        SimGate(1000 + g // 8, g % 8, window=window, batch_max=tap_batch)
        for g in range(first, first + gates)
    ]
    for gate in sims:
        gate.synthetic_taps(per_gate)
    uplink = SimUplink(url, Topics(prefix), sims, version=version, record=False, keepalive=60)
    uplink.connect()
    ready.set()
    go.wait()
    start = time.perf_counter()  # CLOCK_MONOTONIC: comparable between processes
    elapsed = uplink.run(timeout)
    uplink.close()
    results.put((start, start + elapsed, uplink.publishes, list(uplink.gates)))


def _embedded_broker_process(port: int, ready: Any, stop: Any) -> None:
    from backend.broker import embedded_broker

    async def main() -> None:
        async with embedded_broker(port, allow_anonymous=True):  # a benchmark on loopback
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.1)

    asyncio.run(main())


# --- measurements ------------------------------------------------------------------------------------


def measure_baseline(
    url: str, version: str, sub_version: str, messages: int, window: int, size: int
) -> float:
    """Raw QoS 1 publish -> subscribe messages/s through the broker, no database (same-run baseline);
    the publisher speaks the gates' protocol version, the subscriber the ingest's; messages are `size`
    bytes, the size of the run's own tap messages."""
    ctx = multiprocessing.get_context("spawn")
    topic = f"bench{uuid.uuid4().hex[:8]}/baseline"
    count, ready, stop = ctx.Value("q", 0), ctx.Event(), ctx.Event()
    subscriber = ctx.Process(target=_baseline_subscriber, args=(url, sub_version, topic, count, ready, stop))
    subscriber.start()
    try:
        if not ready.wait(15):
            raise RuntimeError("baseline subscriber did not subscribe")
        client, address = _client(url, version, f"bench-pub-{uuid.uuid4().hex[:8]}")
        client.max_inflight_messages_set(0)  # bounded by `window` below, as the gates bound theirs
        client.connect(address.host, address.port)
        client.loop(0.05)
        payload = b"x" * size
        start = time.perf_counter()
        sent = 0
        while sent < messages:
            # keep the subscriber's backlog bounded too (brokers drop past their queue limits)
            if sent - count.value < window:
                client.publish(topic, payload, qos=1)
                sent += 1
                if sent % 64 == 0:
                    client.loop(0)
            else:
                client.loop(0.0005)
        deadline = time.monotonic() + 60
        while count.value < messages and time.monotonic() < deadline:
            client.loop(0.001)
        elapsed = time.perf_counter() - start
        client.disconnect()
        return float(count.value) / elapsed
    finally:
        stop.set()
        subscriber.join(10)


async def _prepare_database(settings: Settings) -> None:
    from backend.db import make_engine
    from backend.migrate import upgrade

    if settings.database_schema:
        import asyncpg

        dsn = settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
        connection = await asyncpg.connect(dsn)
        await connection.execute(f"CREATE SCHEMA {settings.database_schema}")
        await connection.close()
    engine = make_engine(settings)
    await upgrade(engine, settings)
    await engine.dispose()


async def _count(settings: Settings, expected_prefixes: list[str]) -> tuple[int, int]:
    from sqlalchemy import distinct, func, select

    from backend.db import make_engine
    from backend.tables import TapRow

    engine = make_engine(settings)
    async with engine.connect() as connection:
        rows, unique = (
            await connection.execute(
                select(
                    func.count(),
                    func.count(distinct(TapRow.gate_id + ":" + func.cast(TapRow.seq, TapRow.tap_id.type))),
                ).where(TapRow.gate_id.in_(expected_prefixes))
            )
        ).one()
    await engine.dispose()
    return int(rows), int(unique)


async def _drop_schema(settings: Settings) -> None:
    if settings.database_schema:
        import asyncpg

        dsn = settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
        connection = await asyncpg.connect(dsn)
        await connection.execute(f"DROP SCHEMA IF EXISTS {settings.database_schema} CASCADE")
        await connection.close()


def run(args: argparse.Namespace) -> int:
    result = bench(args)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")
    return 0 if result["lost"] == 0 and result["duplicated"] == 0 else 1


@dataclass
class _Publishing:
    """What the publisher processes report: the span of their runs, messages sent, the gates they were."""

    elapsed: float
    publishes: int
    gate_ids: list[str]


def bench(args: argparse.Namespace) -> dict[str, Any]:
    _check_arguments(args)
    ctx = multiprocessing.get_context("spawn")
    with contextlib.ExitStack() as stack:
        broker_name, url, version = stack.enter_context(_broker(args, ctx))
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="faregate-bench-"))
        values = _settings_values(args, url, version, tmp)
        settings = Settings(**values)
        stack.callback(lambda: asyncio.run(_drop_schema(settings)))
        per_gate = max(1, args.taps // args.gates)
        sent = per_gate * args.gates
        gate_version = "3.1.1" if version == "3.1.1" else args.gate_mqtt_version
        result: dict[str, Any] = {
            "broker": broker_name,
            "mqtt_version": version,
            "gate_mqtt_version": gate_version,
            "database": "postgresql" if settings.database_schema else "sqlite",
            "gates": args.gates,
            "window": args.window,
            "tap_batch": args.tap_batch,
            "workers": args.workers,
            "publishers": args.publishers,
        }
        if not args.no_baseline:
            result.update(_baseline(args, url, gate_version, version, sent))
        asyncio.run(_prepare_database(settings))
        stop = ctx.Event()
        with _ingest_workers(ctx, values, args.workers, stop) as cpu:
            publishing = _publish(ctx, args, url, gate_version, values["mqtt_prefix"], per_gate)
        rows, unique = asyncio.run(_count(settings, publishing.gate_ids))
        result.update(_figures(sent, publishing, rows, unique, sum(c.value for c in cpu)))
        if "baseline_broker_taps_per_s" in result:
            ratio = result["taps_per_s"] / result["baseline_broker_taps_per_s"]
            result["ratio_to_baseline"] = round(ratio, 3)
        return result


def _check_arguments(args: argparse.Namespace) -> None:
    if not 1 <= args.tap_batch <= MAX_TAPS_PER_MESSAGE:
        raise SystemExit(f"--tap-batch must be 1..{MAX_TAPS_PER_MESSAGE}")
    if args.gates * args.window > 65_535:
        raise SystemExit("--gates x --window must stay within MQTT's 65,535 message ids per client")


@contextlib.contextmanager
def _broker(args: argparse.Namespace, ctx: Any) -> Iterator[tuple[str, str, str]]:
    """(name, URL, MQTT version) of the broker: the given one, Mosquitto on 1883, else an embedded amqtt
    in a process of its own for the length of the run."""
    if args.mqtt:
        yield "given", args.mqtt, args.mqtt_version or "5"
        return
    if port_open(1883):
        yield "mosquitto", "mqtt://127.0.0.1:1883", args.mqtt_version or "5"
        return
    from backend.broker import free_port

    port = free_port()
    ready, stop = ctx.Event(), ctx.Event()
    process = ctx.Process(target=_embedded_broker_process, args=(port, ready, stop))
    process.start()
    try:
        ready.wait(15)
        yield "amqtt", f"mqtt://127.0.0.1:{port}", "3.1.1"
    finally:
        stop.set()
        process.join(10)


def _settings_values(args: argparse.Namespace, url: str, version: str, tmp: str) -> dict[str, Any]:
    """The ingest's settings: a fresh database (or PostgreSQL schema) and topic prefix for this run."""
    database = args.database or f"sqlite+aiosqlite:///{os.path.join(tmp, 'bench.db')}"
    return {
        "database_url": database,
        "database_schema": f"bench_{uuid.uuid4().hex[:10]}" if database.startswith("postgresql") else None,
        "mqtt_url": url,
        "mqtt_version": version,
        "mqtt_prefix": f"bench{uuid.uuid4().hex[:8]}",
        "ingest_group": "" if version == "3.1.1" else "bench",
        "ingest_client_id": f"bench-ingest-{uuid.uuid4().hex[:8]}",
        "ingest_batch_size": args.batch,
        "ingest_batch_wait_ms": 20,
        "reconcile": False,
    }


def _baseline(
    args: argparse.Namespace, url: str, gate_version: str, version: str, sent: int
) -> dict[str, int]:
    size = len(encode_taps([tap_payload(1000, 0, 1)] * args.tap_batch))  # the run's own messages
    messages = max(1, min(sent, 50_000) // args.tap_batch)
    window = max(4, 500 // args.tap_batch)
    per_s = measure_baseline(url, gate_version, version, messages, window, size)
    return {
        "baseline_broker_msgs_per_s": round(per_s),
        "baseline_broker_taps_per_s": round(per_s * args.tap_batch),
    }


@contextlib.contextmanager
def _ingest_workers(ctx: Any, values: dict[str, Any], count: int, stop: Any) -> Iterator[list[Any]]:
    """`count` ingest worker processes, started and subscribed; yields their CPU-seconds values, which
    hold the figures once the block is left (the workers are stopped then)."""
    workers = []
    for number in range(count):
        ready, cpu = ctx.Event(), ctx.Value("d", 0.0)
        own = {**values, "ingest_client_id": f"{values['ingest_client_id']}-{number}"}
        process = ctx.Process(target=_ingest_process, args=(own, stop, ready, cpu))
        process.start()
        workers.append((process, ready, cpu))
    try:
        for _, ready, _ in workers:
            if not ready.wait(30):
                raise RuntimeError("ingest worker did not start")
        yield [cpu for _, _, cpu in workers]
    finally:
        stop.set()
        for process, _, _ in workers:
            process.join(30)
            if process.is_alive():
                process.kill()


def _publish(
    ctx: Any, args: argparse.Namespace, url: str, gate_version: str, prefix: str, per_gate: int
) -> _Publishing:
    """The gates split over `--publishers` processes, all ready before one signal starts them."""
    go, results = ctx.Event(), ctx.Queue()
    gates, processes = args.gates, args.publishers
    share = [gates // processes + (i < gates % processes) for i in range(processes)]
    publishers = []
    for number, count in enumerate(share):
        ready = ctx.Event()
        process = ctx.Process(
            target=_publisher_process,
            args=(url, gate_version, prefix, sum(share[:number]), count, per_gate, args.window,
                  args.tap_batch, args.timeout, ready, go, results),
        )
        process.start()
        publishers.append((process, ready))
    for _, ready in publishers:
        if not ready.wait(60):
            raise RuntimeError("publisher did not start")
    go.set()
    outcomes = [results.get(timeout=args.timeout + 60) for _ in publishers]
    for process, _ in publishers:
        process.join(30)
    return _Publishing(
        elapsed=max(o[1] for o in outcomes) - min(o[0] for o in outcomes),
        publishes=sum(o[2] for o in outcomes),
        gate_ids=[gate for o in outcomes for gate in o[3]],
    )


def _figures(
    sent: int, publishing: _Publishing, rows: int, unique: int, ingest_cpu_s: float
) -> dict[str, Any]:
    return {
        "taps_per_s": round(sent / publishing.elapsed),
        "seconds": round(publishing.elapsed, 3),
        "sent": sent,
        "publishes": publishing.publishes,
        "stored": unique,
        "lost": sent - unique,
        "duplicated": rows - unique,
        # what the ingest itself costs, apart from the simulated gates and the broker sharing the
        # machine: taps stored per CPU second of the ingest worker processes
        "ingest_cpu_s": round(ingest_cpu_s, 3),
        "ingest_taps_per_cpu_s": round(unique / ingest_cpu_s) if ingest_cpu_s else None,
    }
