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
import json
import multiprocessing
import os
import socket
import tempfile
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from backend.config import Settings
from backend.mqtt import BrokerAddress
from protocol.mqtt import MAX_TAPS_PER_MESSAGE, Topics, encode_taps, tap_id


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


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


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
    """Child process: some of the simulated gates (payloads built before the clock starts)."""
    sim = SimulatedGates(
        url, version, Topics(prefix), gates, per_gate, window, first=first, tap_batch=tap_batch
    )
    sim.connect()
    ready.set()
    go.wait()
    start = time.perf_counter()  # CLOCK_MONOTONIC: comparable between processes
    elapsed = sim.run(timeout)
    sim.close()
    results.put((start, start + elapsed, sim.publishes, sim.ids))


def _embedded_broker_process(port: int, ready: Any, stop: Any) -> None:
    from backend.broker import embedded_broker

    async def main() -> None:
        async with embedded_broker(port):
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


def tap_payload(station: int, gate_no: int, seq: int) -> bytes:
    """One valid TapMessage as a gate encodes it (compact JSON), plausible and cheap to build."""
    card = 0x1000_0000_0000_0000 + station * 256 + gate_no
    return json.dumps(
        {
            "schema_version": 1,
            "tap_id": tap_id(station, gate_no, seq),
            "station_id": station,
            "gate_no": gate_no,
            "seq": seq,
            "card_id": f"{card:016x}",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_795_000_000 + seq)),
            "direction": seq % 2,
            "mode": 0,
            "allowed": True,
            "reason": 0,
            "flags": 0,
            "fare": 200,
            "balance_before": 100_000,
            "balance_after": 99_800,
            "counter_before": seq,
            "counter_after": seq + 1,
            "wallet_before": "00" * 128,
            "fare_table_version": 1,
            "denylist_version": 0,
            "min_counter": 0,
            "action_id": None,
            "topup_applied": 0,
            "latency_us": 180,
        },
        separators=(",", ":"),
    ).encode()


class SimulatedGates:
    """Many gates on one client: bounded window per gate, committed acks, resend requests, stall replay."""

    def __init__(
        self,
        url: str,
        version: str,
        topics: Topics,
        gates: int,
        per_gate: int,
        window: int,
        first: int = 0,
        tap_batch: int = 1,
    ) -> None:
        self.topics = topics
        self.tap_batch = tap_batch
        self.ids = [f"{1000 + g // 8}-{g % 8}" for g in range(first, first + gates)]
        self.per_gate = per_gate
        self.window = window
        self.committed = dict.fromkeys(self.ids, 0)
        self.next_seq = dict.fromkeys(self.ids, 1)
        self.resend: list[tuple[str, int, int]] = []
        self.publishes = 0
        self.cond = threading.Condition()
        self.client, self.address = _client(url, version, f"bench-gates-{uuid.uuid4().hex[:8]}")
        # No paho in-flight limit: each gate's own window bounds the messages in flight (the bench refuses
        # a gates x window over 65,535 message ids), and with a limit set paho scans every queued
        # message on each PUBACK, which made this simulator, not the ingest, the bottleneck.
        self.client.max_inflight_messages_set(0)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(
            [(topics.committed("+"), 1), (topics.resend("+"), 1)]
        )
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.payloads = {gate: self._payloads(gate) for gate in self.ids}

    def _payloads(self, gate: str) -> list[bytes]:
        station, gate_no = (int(x) for x in gate.split("-"))
        return [tap_payload(station, gate_no, seq) for seq in range(1, self.per_gate + 1)]

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        gate = Topics.gate_of(message.topic)
        if gate not in self.committed:
            return  # another publisher process's gate
        body = json.loads(message.payload)
        with self.cond:
            if message.topic.endswith("/committed"):
                if body["through_seq"] > self.committed.get(gate, 0):
                    self.committed[gate] = body["through_seq"]
            else:
                self.resend.append((gate, body["from_seq"], body["to_seq"]))
            self.cond.notify()

    def connect(self) -> None:
        # paho is driven from this one thread (client.loop), not loop_start(): handing every publish
        # to a network thread costs about two thirds of the throughput in GIL hand-offs.
        self.client.connect(self.address.host, self.address.port)
        deadline = time.monotonic() + 15
        while not self.subscribed.is_set():
            self.client.loop(0.05)
            if time.monotonic() > deadline:
                raise RuntimeError("simulated gates could not subscribe")

    def _send(self, gate: str, first: int, last: int) -> None:
        """Taps first..last of a gate, in messages of at most `tap_batch` taps (as a gate's uplink)."""
        for start in range(first, last + 1, self.tap_batch):
            group = self.payloads[gate][start - 1 : min(last, start + self.tap_batch - 1)]
            self.client.publish(self.topics.taps(gate), encode_taps(group), qos=1)
            self.publishes += 1
            if self.publishes % 64 == 0:
                self.client.loop(0)

    def run(self, timeout: float) -> float:
        start = time.perf_counter()
        last_progress, last_total = time.monotonic(), 0
        while True:
            sent_any = False
            for gate in self.ids:
                first = self.next_seq[gate]
                last = min(self.per_gate, self.committed[gate] + self.window)
                if first <= last:
                    self._send(gate, first, last)
                    self.next_seq[gate] = last + 1
                    sent_any = True
            with self.cond:
                requests, self.resend = self.resend, []
                total = sum(self.committed.values())
            for gate, first, last in requests:
                if first <= min(last, self.next_seq[gate] - 1):
                    self._send(gate, first, min(last, self.next_seq[gate] - 1))
            if total >= self.per_gate * len(self.ids):
                return time.perf_counter() - start
            now = time.monotonic()
            if total > last_total:
                last_progress, last_total = now, total
            elif now - last_progress > 5:  # a gate's stall timer: replay what is not committed
                for gate in self.ids:
                    self.next_seq[gate] = self.committed[gate] + 1
                last_progress = now
            if now - start > timeout:
                return time.perf_counter() - start
            self.client.loop(0 if sent_any else 0.005)

    def close(self) -> None:
        self.client.disconnect()


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


def bench(args: argparse.Namespace) -> dict[str, Any]:
    if not 1 <= args.tap_batch <= MAX_TAPS_PER_MESSAGE:
        raise SystemExit(f"--tap-batch must be 1..{MAX_TAPS_PER_MESSAGE}")
    if args.gates * args.window > 65_535:
        raise SystemExit("--gates x --window must stay within MQTT's 65,535 message ids per client")
    ctx = multiprocessing.get_context("spawn")
    stop_broker = ctx.Event()
    broker_process = None
    if args.mqtt:
        url, broker_name = args.mqtt, "given"
        version = args.mqtt_version or "5"
    elif _port_open("127.0.0.1", 1883):
        url, broker_name, version = "mqtt://127.0.0.1:1883", "mosquitto", args.mqtt_version or "5"
    else:
        from backend.broker import free_port

        port = free_port()
        ready = ctx.Event()
        broker_process = ctx.Process(target=_embedded_broker_process, args=(port, ready, stop_broker))
        broker_process.start()
        ready.wait(15)
        url, broker_name, version = f"mqtt://127.0.0.1:{port}", "amqtt", "3.1.1"
    tmp = tempfile.TemporaryDirectory(prefix="faregate-bench-")
    database = args.database or f"sqlite+aiosqlite:///{os.path.join(tmp.name, 'bench.db')}"
    schema = f"bench_{uuid.uuid4().hex[:10]}" if database.startswith("postgresql") else None
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    values: dict[str, Any] = {
        "database_url": database,
        "database_schema": schema,
        "mqtt_url": url,
        "mqtt_version": version,
        "mqtt_prefix": prefix,
        "ingest_group": "" if version == "3.1.1" else "bench",
        "ingest_client_id": f"bench-ingest-{uuid.uuid4().hex[:8]}",
        "ingest_batch_size": args.batch,
        "ingest_batch_wait_ms": 20,
        "reconcile": False,
    }
    settings = Settings(**values)
    per_gate = max(1, args.taps // args.gates)
    sent = per_gate * args.gates
    gate_version = "3.1.1" if version == "3.1.1" else args.gate_mqtt_version
    result: dict[str, Any] = {
        "broker": broker_name,
        "mqtt_version": version,
        "gate_mqtt_version": gate_version,
        "database": "postgresql" if schema else "sqlite",
        "gates": args.gates,
        "window": args.window,
        "tap_batch": args.tap_batch,
        "workers": args.workers,
        "publishers": args.publishers,
    }
    try:
        if not args.no_baseline:
            size = len(encode_taps([tap_payload(1000, 0, 1)] * args.tap_batch))  # the run's own messages
            messages = max(1, min(sent, 50_000) // args.tap_batch)
            window = max(4, 500 // args.tap_batch)
            per_s = measure_baseline(url, gate_version, version, messages, window, size)
            result["baseline_broker_msgs_per_s"] = round(per_s)
            result["baseline_broker_taps_per_s"] = round(per_s * args.tap_batch)
        asyncio.run(_prepare_database(settings))
        stop = ctx.Event()
        workers = []
        for number in range(args.workers):
            ready, cpu = ctx.Event(), ctx.Value("d", 0.0)
            own = {**values, "ingest_client_id": f"{values['ingest_client_id']}-{number}"}
            workers.append((ctx.Process(target=_ingest_process, args=(own, stop, ready, cpu)), ready, cpu))
            workers[-1][0].start()
        try:
            for _, ready, _ in workers:
                if not ready.wait(30):
                    raise RuntimeError("ingest worker did not start")
            go, results = ctx.Event(), ctx.Queue()
            publishers = []
            share = [
                args.gates // args.publishers + (i < args.gates % args.publishers)
                for i in range(args.publishers)
            ]
            for number, count in enumerate(share):
                ready = ctx.Event()
                process = ctx.Process(
                    target=_publisher_process,
                    args=(
                        url,
                        gate_version,
                        prefix,
                        sum(share[:number]),
                        count,
                        per_gate,
                        args.window,
                        args.tap_batch,
                        args.timeout,
                        ready,
                        go,
                        results,
                    ),
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
            elapsed = max(o[1] for o in outcomes) - min(o[0] for o in outcomes)
            publishes = sum(o[2] for o in outcomes)
            gate_ids = [gate for o in outcomes for gate in o[3]]
        finally:
            stop.set()
            for process, _, _ in workers:
                process.join(30)
                if process.is_alive():
                    process.kill()
        ingest_cpu_s = sum(cpu.value for _, _, cpu in workers)
        rows, unique = asyncio.run(_count(settings, gate_ids))
        result.update(
            {
                "taps_per_s": round(sent / elapsed),
                "seconds": round(elapsed, 3),
                "sent": sent,
                "publishes": publishes,
                "stored": unique,
                "lost": sent - unique,
                "duplicated": rows - unique,
                # what the ingest itself costs, apart from the simulated gates and the broker sharing
                # the machine: taps stored per CPU second of the ingest worker processes
                "ingest_cpu_s": round(ingest_cpu_s, 3),
                "ingest_taps_per_cpu_s": round(unique / ingest_cpu_s) if ingest_cpu_s else None,
            }
        )
        if "baseline_broker_taps_per_s" in result:
            result["ratio_to_baseline"] = round(
                result["taps_per_s"] / result["baseline_broker_taps_per_s"], 3
            )
    finally:
        asyncio.run(_drop_schema(settings))
        tmp.cleanup()
        if broker_process is not None:
            stop_broker.set()
            broker_process.join(10)
    return result
