"""`faregate bench city`: a city of simulated gates through station servers into the centre.

Many stations of MQTT-level gates (faregate.city.citygates: one connection and login per gate, hundreds
to a process, each verifying the backend's signatures as a real gate does) tap at a steady rate and
send their status every minute through
their station servers (faregate.city.station: a Mosquitto per station bridged to the centre) into the
centre (today: one Mosquitto and PostgreSQL with the existing ingest workers; faregate.city.centre is
where a clustered broker and several workers plug in). While the gates tap, the operator blocks phones
(backend.distribution.Distributor.change_denylist, the call the block route makes): the time from that
call to each gate applying the verified delta is the deny propagation. After the taps, a signed
deny-list snapshot of `--snapshot-ids` phones goes to every gate (what a new gate, or one back from a
long absence, starts from): snapshot_fanout_s is from its publication to the last gate applying it.
At the end the database is counted: lost (made, not stored), duplicated (stored more than once).

The same-run baseline is today's path: the same gates, rate and blocks, every gate logged in to the
central Mosquitto directly, no station servers.

`--centre cluster` (cluster_scenario): the station servers bridge to a 3-node NATS JetStream cluster
(faregate.city.cluster; each bridge lists the three MQTT gateways, downlink at QoS 0: see
faregate.city.station's NATS_BRIDGE), `--workers` ingest processes (faregate.city.workers) pull its stream
into PostgreSQL, and while the gates tap one node (the stream's leader by default) and one worker are
killed -9 (Kills); `_drive` and the figures are the same. The baseline is then one Mosquitto and one
worker. docs/deployment.md, "City bench", has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import multiprocessing
import queue
import random
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.broker import free_port
from faregate.city.centre import POSTGRES_URL, CentreBackend, database, ingest_values, run_centre
from faregate.city.citygates import CityGate, GateReport, run_gates
from faregate.city.launch import rss_bytes
from faregate.city.station import Mosquitto, run_city, write_station
from faregate.simgate import SimUplink
from protocol.mqtt import (
    DEVELOPMENT_PUBLIC_KEY,
    DenyListSnapshotMessage,
    Topics,
    Verifier,
    gate_id,
    parse_gate_id,
)

if TYPE_CHECKING:
    from faregate.city.cluster import NatsCluster, NatsNode
    from faregate.city.cluster_auth import ClusterAccounts
    from faregate.city.workers import IngestWorkers

MAX_GATES_PER_STATION = 255  # gate_no is a u8 (docs/mqtt.md)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gates", type=int, default=2000, help="simulated gates (default 2000)")
    parser.add_argument("--stations", type=int, default=20, help="stations, one server each (default 20)")
    parser.add_argument("--per-process", type=int, default=400,
                        help="gates a simulating process runs, each its own connection (default 400)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the gates tap (default 30)")
    parser.add_argument("--tap-interval", type=float, default=5.0,
                        help="seconds between one gate's taps (default 5: 400 taps/s for 2000 gates)")
    parser.add_argument("--blocks", type=int, default=5,
                        help="phones blocked while the gates tap (default 5)")
    parser.add_argument("--snapshot-ids", type=int, default=1000,
                        help="phones in the deny-list snapshot sent to every gate at the end (default 1000)")
    parser.add_argument("--centre", choices=("mosquitto", "cluster"), default="mosquitto",
                        help="the centre the stations bridge to: one Mosquitto (default, today's) or the "
                        "3-node NATS JetStream cluster, with one node and one worker killed -9 mid-stream")
    parser.add_argument("--workers", type=int, default=None,
                        help="ingest worker processes (default 1 on Mosquitto, 2 on the cluster)")
    parser.add_argument("--ack-wait", type=float, default=10.0,
                        help="cluster: seconds before a killed worker's unacknowledged messages go to "
                        "another (the workers' --ingest-ack-wait; default 10)")
    parser.add_argument("--kill", choices=("both", "node", "worker", "none"), default="both",
                        help="cluster: what is killed -9 while the gates tap (default both)")
    parser.add_argument("--kill-node", choices=("leader", "follower"), default="leader",
                        help="cluster: kill the uplink stream's RAFT leader or a follower (default leader)")
    parser.add_argument("--database", default=POSTGRES_URL, help=f"database URL (default {POSTGRES_URL})")
    parser.add_argument("--stall-max", type=float, default=300.0,
                        help="double the stall wait after each replay that brought no ack, up to this many "
                        "seconds (default 300, as gate/uplink.py's [mqtt] stall_max_s; 0: replay at a "
                        "fixed pace, the gates before session 6)")
    parser.add_argument("--relay-processes", type=int, default=4,
                        help="cluster: processes the station relays share (default 4; a deployment runs "
                        "one beside each station)")
    parser.add_argument("--station-link", choices=("relay", "bridge"), default="relay",
                        help="cluster: how each station server is linked to the centre: a relay publishing "
                        "taps into JetStream with its acknowledgement and taking the downlink by plain NATS "
                        "(default; backend/relay.py), or a Mosquitto bridge into the nodes' MQTT gateways")
    parser.add_argument("--status-interval", type=float, default=60.0,
                        help="seconds between one gate's status messages (default 60, as a gate)")
    parser.add_argument("--stall", type=float, default=10.0,
                        help="seconds without an ack before a gate sends its backlog again (gate default 10)")
    parser.add_argument("--outage", type=float, default=0.0,
                        help="stop the centre for the last this many seconds of taps, then measure the "
                        "backlog's catch-up (default 0: no outage)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the single-broker baseline")
    parser.add_argument("--timeout", type=float, default=120.0, help="longest wait for the last commit")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    result = bench(args)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>28}: {value}")
    ok = result["lost"] == 0 and result["duplicated"] == 0 and result["deny_missed"] == 0
    return 0 if ok else 1


def bench(args: argparse.Namespace) -> dict[str, Any]:
    _check(args)
    cluster = args.centre == "cluster"
    workers = args.workers or (2 if cluster else 1)
    run = cluster_scenario(args, workers) if cluster else scenario(args, via_stations=True, workers=workers)
    result: dict[str, Any] = {}
    if not args.no_baseline:  # today's path: every gate on one Mosquitto, one worker (as many on Mosquitto)
        baseline = asyncio.run(scenario(args, via_stations=False, workers=1 if cluster else workers))
        result.update(asyncio.run(run))
        result["baseline_single_broker"] = baseline
    else:
        result.update(asyncio.run(run))
    return result


def _check(args: argparse.Namespace) -> None:
    if args.gates < 1 or args.stations < 1 or args.per_process < 1 or args.relay_processes < 1:
        raise SystemExit("--gates, --stations, --per-process and --relay-processes must be at least 1")
    if -(-args.gates // args.stations) > MAX_GATES_PER_STATION:
        raise SystemExit(f"at most {MAX_GATES_PER_STATION} gates a station: give more --stations")
    if not 0 <= args.outage < args.seconds:
        raise SystemExit("--outage must be below --seconds")
    if args.seconds <= 0 or args.tap_interval <= 0:
        raise SystemExit("--seconds and --tap-interval must be positive")
    if args.workers is not None and args.workers < 1:
        raise SystemExit("--workers must be at least 1")
    if args.centre == "cluster" and not args.database.startswith("postgresql"):
        raise SystemExit("--centre cluster stores on PostgreSQL (the workers share it)")
    if args.centre == "cluster" and args.outage:
        raise SystemExit("--outage stops a Mosquitto centre; with --centre cluster a node is killed instead")
    if args.centre == "cluster" and args.kill in ("both", "worker") and (args.workers or 2) < 2:
        raise SystemExit("killing a worker needs --workers 2 or more (the others carry on)")


def layout(gates: int, stations: int) -> dict[int, list[int]]:
    """Gates spread evenly over stations 1..stations, numbered 1.. within each."""
    share = [gates // stations + (i < gates % stations) for i in range(stations)]
    return {100 + i: list(range(1, n + 1)) for i, n in enumerate(share) if n}


# --- the simulating processes --------------------------------------------------------------------------

GateSpec = tuple[int, int, int, str]  # station, gate_no, broker port, password


async def _poll(event: Any, interval: float = 0.02) -> None:
    while not event.is_set():
        await asyncio.sleep(interval)


async def _gates_main(specs: list[GateSpec], prefix: str, options: dict[str, float], events: dict[str, Any],
                      results: Any) -> None:
    verifier = Verifier([DEVELOPMENT_PUBLIC_KEY])
    topics = Topics(prefix)
    gates = [CityGate(sid, no, host="127.0.0.1", port=port, password=password, topics=topics,
                      verifier=verifier, stall_s=options["stall"], status_s=options["status"],
                      stall_max_s=options["stall_max"])
             for sid, no, port, password in specs]
    stop = asyncio.Event()
    runner = asyncio.create_task(run_gates(gates, stop, connect_spread_s=options["connect_spread"]))
    lags: list[tuple[float, float]] = []
    lag_probe = asyncio.create_task(_loop_lag(lags))
    try:
        deadline = time.monotonic() + 60
        while not all(g.connected.is_set() for g in gates) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        events["ready"].set()
        await _poll(events["go"])
        # each gate taps every `interval` seconds, first at a random moment within one interval
        interval, rng = options["interval"], random.Random(specs[0][0] * 1000 + specs[0][1])
        start = time.monotonic()
        due = [(start + rng.random() * interval, i) for i in range(len(gates))]
        heapq.heapify(due)
        while not events["stop_tapping"].is_set():
            now = time.monotonic()
            while due and due[0][0] <= now:
                when, i = heapq.heappop(due)
                gates[i].tap()
                heapq.heappush(due, (when + interval, i))
            await asyncio.sleep(min(0.05, max(0.0, due[0][0] - time.monotonic())) if due else 0.05)
        deadline = time.monotonic() + options["timeout"]
        while not all(g.all_committed() for g in gates) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        events["drained"].put(time.monotonic())
        while not events["stop"].is_set():  # until every gate here holds the final snapshot
            wanted = events["snapshot"].value
            if wanted and all(g.denylist.version >= wanted for g in gates):
                events["have_snapshot"].put(time.monotonic())
                break
            await asyncio.sleep(0.02)
        await _poll(events["stop"], 0.05)
    finally:
        stop.set()
        try:
            await asyncio.wait({runner}, timeout=30)
            if not runner.done():
                raise TimeoutError
        except TimeoutError:  # say what still runs, and report anyway: the counts are what matters
            stuck = [g.id for g in gates if g.connected.is_set()]
            print(f"bench city: {len(stuck)} gates of this process still closing after 30 s: {stuck[:10]}",
                  file=sys.stderr, flush=True)
            for task in list(asyncio.all_tasks())[:5]:
                task.print_stack(limit=6, file=sys.stderr)
    lag_probe.cancel()
    results.put({"gates": [asdict(g.report()) for g in gates], "loop_lag_ms": lags})


async def _loop_lag(lags: list[tuple[float, float]], every: float = 0.02) -> None:
    """(when, ms late) of this process's event loop waking for a 20 ms timer, every 20 ms: a gate's
    message waits about that long before the gate sees it. On two shared cores that is the simulator's
    own starvation, not the city's; the bench reports it beside the propagation figures."""
    while True:
        asked = time.monotonic()
        await asyncio.sleep(every)
        lags.append((asked, (time.monotonic() - asked - every) * 1000))


def _gates_process(specs: list[GateSpec], prefix: str, options: dict[str, float], events: dict[str, Any],
                   results: Any) -> None:
    asyncio.run(_gates_main(specs, prefix, options, events, results))


class ArrivalProbe(SimUplink):
    """One plain subscriber at a broker (a station server, or the centre in the baseline), logged in as
    one of its gates: when each deny-list delta and snapshot reached that broker's subscribers, apart
    from the simulated gates' own processing (hundreds of gates share a core here; a real gate has its
    own)."""

    def __init__(self, url: str, topics: Topics, username: str, password: str) -> None:
        super().__init__(url, topics, username=username, password=password,
                         subscribe=[topics.denylist_delta, topics.denylist_snapshot], record=False,
                         client_id=f"probe-{uuid.uuid4().hex[:8]}")
        self.station = parse_gate_id(username)[0]  # logged in as this station's first gate
        self.arrived: dict[int, float] = {}

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        at = time.monotonic()  # before a megabyte snapshot is parsed
        with contextlib.suppress(ValueError, KeyError, TypeError):
            self.arrived.setdefault(int(json.loads(message.payload)["version"]), at)


# --- one scenario ----------------------------------------------------------------------------------------


async def scenario(args: argparse.Namespace, via_stations: bool, workers: int = 1) -> dict[str, Any]:
    """One run: stations and centre (or the centre alone), ingest, gates, blocks, snapshot, count."""
    stations = layout(args.gates, args.stations)
    prefix = f"city{uuid.uuid4().hex[:8]}"
    all_gates = [gate_id(s, no) for s, nos in stations.items() for no in nos]
    with (
        tempfile.TemporaryDirectory(prefix="faregate-city-") as tmp,
        run_city(Path(tmp), prefix, stations if via_stations else {},
                 direct_gates=() if via_stations else all_gates) as city,
    ):
        if via_stations:
            specs = [(s, no, city.stations[s].port, city.stations[s].passwords[gate_id(s, no)])
                     for s, nos in stations.items() for no in nos]
        else:
            centre_files = city.centre.files
            specs = [(s, no, centre_files.port, centre_files.passwords[gate_id(s, no)])
                     for s, nos in stations.items() for no in nos]
        values = ingest_values(args.database, city.centre_url, prefix)
        probes = _station_probes(specs, prefix)
        try:
            for probe in probes:
                probe.start()
            for probe in probes:
                probe.wait_ready(30)
            async with run_centre(values, workers) as centre:
                outage = Outage(city.centre, centre, all_gates, [st.broker for st in city.stations.values()])
                figures = await _drive(args, values, prefix, specs, probes, outage, None)
                rows, unique = await centre.count(all_gates)
        finally:
            for probe in probes:
                probe.close()
    made = figures.pop("made")
    figures.update({
        "stations": len(stations) if via_stations else 0,
        "centre": "mosquitto",
        "brokers": 1 + (len(stations) if via_stations else 0),
        "workers": workers,
        "made": made,
        "stored": unique,
        "lost": made - unique,
        "duplicated": rows - unique,
    })
    return figures


# --- the clustered centre ----------------------------------------------------------------------------------


async def _stream_leader(cluster: NatsCluster, timeout: float = 30.0) -> str:
    """The node leading the uplink stream's RAFT group (the workers made the stream at their start)."""
    import nats

    from backend.ingest.stream import STREAM

    connection = await nats.connect(cluster.urls)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                info = await connection.jetstream().stream_info(STREAM)
                if info.cluster is not None and info.cluster.leader:
                    return str(info.cluster.leader)
            await asyncio.sleep(0.2)
    finally:
        await connection.close()
    raise TimeoutError("the uplink stream has no leader")


def _station_probes(specs: list[GateSpec], prefix: str) -> list[ArrivalProbe]:
    """One probe at each broker the gates log in to, as its first gate."""
    first: dict[int, tuple[str, str]] = {}
    for station, no, port, password in specs:
        first.setdefault(port, (gate_id(station, no), password))
    return [ArrivalProbe(f"mqtt://127.0.0.1:{port}", Topics(prefix), user, password)
            for port, (user, password) in first.items()]


@dataclass
class Kills:
    """kill -9 one NATS node (half way into the taps) and one ingest worker (0.75 into them). Each counts as
    killed mid-stream only if the process was alive and is dead after, taps were stored before it and
    more were made after it (the latter checked at the end)."""

    cluster: NatsCluster
    workers: IngestWorkers
    backend: CentreBackend
    gate_ids: list[str]
    node: NatsNode | None
    node_role: str
    kill_worker: bool
    figures: dict[str, Any] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    # fractions of the tap phase. Before session 6's review the bench passed one block interval (a sixth
    # of the phase at 5 blocks) as the phase, so the kills came at a twelfth and an eighth of it.
    NODE_AT, WORKER_AT = 0.5, 0.75

    def schedule(self, started: float, live: float) -> None:
        self.figures["_started"] = started
        if self.node is not None:
            self._tasks.append(asyncio.create_task(self._kill_node(started + self.NODE_AT * live)))
        if self.kill_worker:
            self._tasks.append(asyncio.create_task(self._kill_worker(started + self.WORKER_AT * live)))

    async def _kill_node(self, at: float) -> None:
        node = self.node
        assert node is not None
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        _, stored = await self.backend.count(self.gate_ids)
        alive = node.alive
        await asyncio.to_thread(self.cluster.kill, node)
        self.figures.update(node_killed_name=node.name, node_killed_role=self.node_role,
                            stored_at_node_kill=stored, _node_ok=alive and not node.alive and stored > 0,
                            _node_at=time.monotonic())

    async def _kill_worker(self, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        victim = self.workers.workers[0]
        _, stored = await self.backend.count(self.gate_ids)
        alive = victim.alive
        await asyncio.to_thread(self.workers.kill, victim)
        self.figures.update(worker_killed_name=victim.name, stored_at_worker_kill=stored,
                            _worker_ok=alive and not victim.alive and stored > 0, _worker_at=time.monotonic())

    async def done(self, stopped_tapping: float) -> None:
        """After the taps: each kill happened, and before the taps stopped."""
        await asyncio.gather(*self._tasks)
        f = self.figures
        started = f.pop("_started", None)
        for kill in ("node", "worker"):
            ok, at = bool(f.pop(f"_{kill}_ok", False)), f.pop(f"_{kill}_at", None)
            f[f"{kill}_killed"] = ok and at is not None and at < stopped_tapping
            if at is not None and started is not None:
                f[f"{kill}_killed_at_s"] = round(at - started, 2)  # seconds into the taps

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()


def relay_accounts(prefix: str, stations: dict[int, list[int]], processes: int) -> ClusterAccounts:
    """The cluster's accounts: the backend's, and one for each relay process with the gates of the
    stations it serves (station i of the list to process i % count, as StationRelays shares them)."""
    from faregate.city.cluster_auth import ClusterAccounts
    from faregate.city.workers import share

    accounts = ClusterAccounts(prefix)
    for index, served in enumerate(share(list(stations.items()), processes)):
        gates = [gate_id(station, no) for station, nos in served for no in nos]
        accounts.add_relay(f"relay-{index + 1}", gates)
    return accounts


async def cluster_scenario(args: argparse.Namespace, workers: int) -> dict[str, Any]:
    """The city through the cluster: station servers bridged to a 3-node NATS JetStream cluster (each
    station's bridge lists the three MQTT gateways, first nodes spread round the stations), `workers`
    ingest processes pulling the stream into PostgreSQL; one node and one worker killed -9 mid-stream."""
    from backend.relay import RELAY_USER
    from faregate.city.cluster import NatsCluster
    from faregate.city.workers import IngestWorkers, StationRelays

    stations = layout(args.gates, args.stations)
    prefix = f"city{uuid.uuid4().hex[:8]}"
    all_gates = [gate_id(s, no) for s, nos in stations.items() for no in nos]
    relay = args.station_link == "relay"
    accounts = relay_accounts(prefix, stations, args.relay_processes) if relay else None
    with (
        tempfile.TemporaryDirectory(prefix="faregate-city-") as tmp,
        NatsCluster(Path(tmp) / "nats", accounts=accounts) as cluster,
    ):
        nodes = cluster.nodes
        brokers: list[Mosquitto] = []
        probes: list[ArrivalProbe] = []
        try:
            specs: list[GateSpec] = []
            relay_password = secrets.token_urlsafe(12)
            for index, (station, nos) in enumerate(stations.items()):
                order = nodes[index % len(nodes):] + nodes[: index % len(nodes)]
                files = write_station(Path(tmp) / f"station-{station}", prefix, station, nos, free_port(),
                                      ("127.0.0.1", order[0].mqtt_port), "no-auth-on-this-cluster",
                                      more_centres=[("127.0.0.1", n.mqtt_port) for n in order[1:]],
                                      centre_is_mosquitto=False,
                                      relay_password=relay_password if relay else None)
                broker = Mosquitto(files)
                brokers.append(broker)
                broker.start()
                specs += [(station, no, files.port, files.passwords[gate_id(station, no)]) for no in nos]
            relays = StationRelays(
                Path(tmp) / "relays",
                [f"mqtt://{RELAY_USER}:{relay_password}@127.0.0.1:{b.files.port}" for b in brokers],
                [",".join(cluster.urls_as(a.user, a.password)) for a in accounts.relays.values()] if accounts
                else cluster.ingest_url, prefix, processes=args.relay_processes) if relay else None
            values = ingest_values(args.database, nodes[0].mqtt_url, prefix)
            values["mqtt_version"] = "3.1.1"  # nats-server's MQTT gateway speaks 3.1.1 only
            async with database(values):
                ingest = IngestWorkers(Path(tmp) / "workers", cluster.ingest_url, cluster.mqtt_urls,
                                       args.database, prefix, count=workers, schema=values["database_schema"],
                                       ack_wait_s=args.ack_wait, downlink="nats" if relay else None)
                try:
                    await asyncio.to_thread(ingest.start)
                    if relays is not None:
                        await asyncio.to_thread(relays.start)
                    leader = await _stream_leader(cluster)
                    if args.kill_node == "leader":
                        victim = next(n for n in nodes if n.name == leader)
                    else:
                        victim = next(n for n in nodes if n.name != leader)
                    # the operator's publisher on nodes that stay up (a real backend lists them all; here
                    # nats-py, failing over from the killed node, can leave one dead socket unclosed, a
                    # ResourceWarning the tests would take for this process's own leak)
                    values["mqtt_url"] = next(n for n in nodes if n is not victim).mqtt_url
                    if relay:  # the operator's blocks and state as NATS publishes, as the relays take them
                        values["publish_nats_url"] = ",".join(
                            url for url, node in zip(cluster.urls, nodes, strict=True) if node is not victim)
                    backend = CentreBackend(values, workers)
                    probes = _station_probes(specs, prefix)
                    for probe in probes:
                        probe.start()
                    for probe in probes:
                        probe.wait_ready(30)
                    kills = Kills(cluster, ingest, backend, all_gates,
                                  victim if args.kill in ("both", "node") else None,
                                  f"stream leader ({leader})" if victim.name == leader
                                  else f"follower (leader {leader})",
                                  args.kill in ("both", "worker"))
                    outage = Outage(brokers[0], backend, all_gates, brokers)
                    try:
                        figures = await _drive(args, values, prefix, specs, probes, outage, kills)
                    finally:
                        kills.cancel()
                    rows, unique = await backend.count(all_gates)
                    figures["workers_alive_at_end"] = sum(w.alive for w in ingest.workers)
                    figures["cluster_rss_mb"] = [round(n.rss_bytes() / 2**20, 1) for n in nodes if n.alive]
                finally:
                    for probe in probes:
                        probe.close()
                    if relays is not None:
                        await asyncio.to_thread(relays.stop)
                    await asyncio.to_thread(ingest.stop)
        finally:
            for broker in reversed(brokers):
                broker.stop()
    made = figures.pop("made")
    for kill in ("node", "worker"):  # mid-stream: more taps were made after the kill than stored before
        at = figures.get(f"stored_at_{kill}_kill")
        figures[f"{kill}_killed"] = bool(figures.get(f"{kill}_killed")) and at is not None and at < made
    figures.update({
        "centre": "nats-cluster",
        "station_link": args.station_link,
        "relay_processes": args.relay_processes if args.station_link == "relay" else 0,
        "stations": len(stations),
        "brokers": len(stations) + len(nodes),
        "workers": workers,
        "made": made,
        "stored": unique,
        "lost": made - unique,
        "duplicated": rows - unique,
    })
    return figures


@dataclass
class Outage:
    """What a centre outage needs: the centre broker to stop and start, the database to count."""

    broker: Mosquitto
    backend: CentreBackend
    gate_ids: list[str]
    stations: list[Mosquitto]
    figures: dict[str, Any] = field(default_factory=dict)
    restored: float = 0.0
    first_commit: float = 0.0
    _watch: asyncio.Task[None] | None = None

    def _station_rss_mb(self) -> float | None:
        """The largest resident memory of a station server (its queue lives there), in MB."""
        sizes = [rss_bytes(b.process.pid) for b in self.stations if b.process is not None]
        return round(max(sizes) / 2**20, 1) if sizes else None

    async def cut(self) -> None:
        self.figures["station_rss_mb_before"] = self._station_rss_mb()
        await asyncio.to_thread(self.broker.stop)
        self.figures["outage_started"] = time.monotonic()

    async def restore(self) -> None:
        _, stored = await self.backend.count(self.gate_ids)
        self.figures["station_rss_mb_at_restore"] = self._station_rss_mb()
        await asyncio.to_thread(self.broker.start)
        self.restored = time.monotonic()
        self.figures.update(outage_s=round(self.restored - self.figures.pop("outage_started"), 3),
                            stored_before_restore=stored)
        self._watch = asyncio.create_task(self._first_commit(stored))

    async def _first_commit(self, stored: int) -> None:
        """When the first tap of the backlog is stored: the ingest's own reconnection (its back-off
        doubles to 30 s while the broker is away) comes before any catch-up can start."""
        while (await self.backend.count(self.gate_ids))[1] <= stored:
            await asyncio.sleep(0.1)
        self.first_commit = time.monotonic()

    def settle(self, made: int, drained_at: float) -> dict[str, Any]:
        if not self.restored:
            return {}
        if self._watch is not None:
            self._watch.cancel()
        backlog = made - self.figures["stored_before_restore"]
        catch_up = drained_at - self.restored
        drain = drained_at - self.first_commit if self.first_commit else 0.0
        return {**self.figures, "backlog_taps": backlog, "catch_up_s": round(catch_up, 3),
                "ingest_back_s": round(self.first_commit - self.restored, 3) if self.first_commit else None,
                "drain_s": round(drain, 3),
                "drain_taps_per_s": round(backlog / drain) if drain > 0 else None}


async def _drive(args: argparse.Namespace, values: dict[str, Any], prefix: str, specs: list[GateSpec],
                 probes: list[ArrivalProbe], outage: Outage, kills: Kills | None) -> dict[str, Any]:
    from backend.config import Settings
    from backend.db import make_engine, make_sessionmaker
    from backend.distribution import Distributor
    from backend.publisher import Publisher

    ctx = multiprocessing.get_context("spawn")
    go, stop_tapping, stop = ctx.Event(), ctx.Event(), ctx.Event()
    drained, have_snapshot, results = ctx.Queue(), ctx.Queue(), ctx.Queue()
    wanted_snapshot = ctx.Value("q", 0)
    chunks = [specs[i : i + args.per_process] for i in range(0, len(specs), args.per_process)]
    options = {"stall": args.stall, "interval": args.tap_interval, "timeout": args.timeout,
               "status": args.status_interval, "stall_max": args.stall_max,
               "connect_spread": min(5.0, len(specs) / 400)}
    processes, readies = [], []
    for chunk in chunks:
        ready = ctx.Event()
        events = {"ready": ready, "go": go, "stop_tapping": stop_tapping, "stop": stop, "drained": drained,
                  "snapshot": wanted_snapshot, "have_snapshot": have_snapshot}
        process = ctx.Process(target=_gates_process, args=(chunk, prefix, options, events, results))
        process.start()
        processes.append(process)
        readies.append(ready)
    settings = Settings(**values)
    engine = make_engine(settings)
    publisher = Publisher(settings, client_id=f"city-operator-{uuid.uuid4().hex[:6]}")
    publisher.start()
    distributor = Distributor(make_sessionmaker(engine), publisher)
    reports: list[GateReport] = []
    loop_lags: list[tuple[float, float]] = []  # (monotonic time, ms) from every gates process
    try:
        await publisher.wait_connected(30)
        for ready in readies:
            async with asyncio.timeout(120):
                await asyncio.to_thread(ready.wait)
        rng = random.Random(16)
        blocks: dict[int, float] = {}
        published: list[float] = []  # how long each block call took (commit, delta and snapshot PUBACKed)
        block_failures = 0  # block calls whose publish failed (no PUBACK), republished as the snapshot
        started = time.monotonic()
        go.set()
        live = args.seconds - args.outage  # the centre is cut for the last `outage` seconds of taps
        if kills is not None:  # the node half way through the tap phase, the worker at three quarters
            kills.schedule(started, live)
        for n in range(args.blocks):  # the operator's blocks, spread over the time the centre is up
            due = started + live * (n + 1) / (args.blocks + 1)
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            called = time.monotonic()
            try:
                version = (await distributor.change_denylist([f"{rng.getrandbits(64):016x}"], [],
                                                             "bench city")).version
            except TimeoutError:  # saved, not published (the API's 503): republish the list until it is
                block_failures += 1
                version = await _republish_denylist(distributor)
            published.append(time.monotonic() - called)
            blocks[version] = called
        if args.outage:
            await asyncio.sleep(max(0.0, started + live - time.monotonic()))
            await outage.cut()
        await asyncio.sleep(max(0.0, started + args.seconds - time.monotonic()))
        stop_tapping.set()
        tapped = time.monotonic() - started
        if kills is not None:
            await kills.done(stopped_tapping=time.monotonic())
        if args.outage:
            await asyncio.sleep(0.5)  # the last taps reach their station
            await outage.restore()
        drain_ends = [await asyncio.to_thread(drained.get, True, args.timeout + 60) for _ in processes]
        span = max(drain_ends) - started
        # the snapshot a new gate starts from: signed, retained, `snapshot_ids` phones
        await publisher.wait_connected(60)  # back after an outage
        snapshot, snapshot_bytes, snapshot_sent = await _send_snapshot(
            distributor, prefix, args.snapshot_ids, rng, wanted_snapshot)
        deadline = time.monotonic() + 60
        for _ in processes:  # every gate has it, or a minute passed (the gates without it are counted)
            with contextlib.suppress(queue.Empty):
                await asyncio.to_thread(have_snapshot.get, True, max(0.1, deadline - time.monotonic()))
        stop.set()
        for _ in processes:
            result = await asyncio.to_thread(results.get, True, 60)
            reports += [GateReport(**r) for r in result["gates"]]
            loop_lags += result["loop_lag_ms"]
    finally:
        stop_tapping.set()
        stop.set()
        for process in processes:
            await asyncio.to_thread(process.join, 30)
            if process.is_alive():
                process.kill()
        await publisher.aclose()
        await engine.dispose()
        if kills is not None:
            kills.cancel()
    figures = _figures(args, reports, blocks, snapshot, snapshot_bytes, snapshot_sent, tapped, span)
    # the simulating processes' own lateness while the gates tapped: what of the propagation is theirs
    tapping = [ms for at, ms in loop_lags if started <= at <= started + tapped]
    figures["gates_loop_lag_ms_p99"] = round(_percentile(tapping, 0.99), 1) if tapping else None  # of samples
    figures["gates_loop_lag_ms_max"] = round(max(tapping), 1) if tapping else None
    figures["block_call_ms_max"] = round(max(published) * 1000, 1) if published else None
    figures["block_publish_failures"] = block_failures
    figures.update(outage.settle(figures["made"], started + span))
    if kills is not None:
        figures.update(kills.figures)
    at_brokers = [(probe.arrived[v] - called) * 1000 for v, called in blocks.items() for probe in probes
                  if v in probe.arrived]
    figures["deny_at_brokers_ms_p50"] = round(_percentile(at_brokers, 0.5), 1)
    figures["deny_at_brokers_ms_max"] = round(max(at_brokers), 1) if at_brokers else None
    figures["deny_by_block"] = _by_block(reports, blocks, probes, started, snapshot)
    # the snapshot at every broker the gates log in to: the network's part of its fan-out
    at_brokers_s = [probe.arrived[snapshot] - snapshot_sent for probe in probes if snapshot in probe.arrived]
    figures["snapshot_at_brokers_s_max"] = round(max(at_brokers_s), 3) if len(at_brokers_s) == len(probes) \
        else None
    return figures


def _by_block(reports: list[GateReport], blocks: dict[int, float], probes: list[ArrivalProbe],
              started: float, final: int) -> list[dict[str, Any]]:
    """Each block on its own: when it was called (seconds into the taps; the kills' times are beside),
    its propagation to the gates, and how many station servers' subscribers saw its delta."""
    rows = []
    for version, called in sorted(blocks.items()):
        held = [_first_at_or_after(r.applied, version, final) for r in reports]
        ms = [(at - called) * 1000 for at in held if at is not None]
        rows.append({
            "version": version,
            "called_s": round(called - started, 2),
            "p50_ms": round(_percentile(ms, 0.5), 1),
            "p99_ms": round(_percentile(ms, 0.99), 1),
            "max_ms": round(max(ms), 1) if ms else None,
            "delta_missed": sum(1 for r in reports if version not in r.applied),
            "brokers_with_delta": sum(1 for probe in probes if version in probe.arrived),
            "by_station": _by_station(reports, held, called, probes, version),
        })
    return rows


def _by_station(reports: list[GateReport], held: list[float | None], called: float,
                probes: list[ArrivalProbe], version: int) -> list[list[float | None]]:
    """[station, ms to its server's probe, p50 ms, p99 ms at its gates] of one block: whether a slow
    block was slow on the way to some stations (their relay), from a station to its gates (its server),
    or in the simulating processes."""
    by_station: dict[int, list[float]] = {}
    for report, at in zip(reports, held, strict=True):
        if at is not None:
            by_station.setdefault(parse_gate_id(report.gate_id)[0], []).append((at - called) * 1000)
    at_server = {p.station: round((p.arrived[version] - called) * 1000, 1)
                 for p in probes if version in p.arrived}
    return [[station, at_server.get(station), round(_percentile(ms, 0.5), 1), round(_percentile(ms, 0.99), 1)]
            for station, ms in sorted(by_station.items())]


async def _republish_denylist(distributor: Any) -> int:
    """The operator's retry after a block call answered "saved, but not published" (a cluster node
    lost, its streams electing leaders): the retained snapshot of the current list, until PUBACKed."""
    while True:
        try:
            await distributor.publish_denylist_snapshot()
            return int((await distributor.snapshot()).version)
        except TimeoutError:
            await asyncio.sleep(0.5)


async def _send_snapshot(distributor: Any, prefix: str, count: int, rng: random.Random, wanted: Any
                         ) -> tuple[int, int, float]:
    """Publish a signed deny-list snapshot of `count` phones, a version above every block, then its
    signed reference (the beacon that sends the gates, all behind it now, to the retained snapshot, as
    the backend's publish_denylist_snapshot does); returns (version, snapshot payload bytes, monotonic
    time of the call)."""
    import hashlib

    import fare_core
    from protocol.mqtt import DenyListSnapshotRef, encode

    current = (await distributor.snapshot()).version
    version = current + 1000
    ids = sorted({rng.getrandbits(64) for _ in range(count)})
    denylist = fare_core.DenyList(ids, version=version)
    message = distributor.publisher.signer.sign(DenyListSnapshotMessage(
        version=version, card_ids=ids, checksum=denylist.checksum, time=datetime.now(UTC)))
    payload = encode(message)
    wanted.value = version
    sent = time.monotonic()
    await distributor.publisher.publish(Topics(prefix).denylist_snapshot, payload, retain=True)
    ref = DenyListSnapshotRef(version=version, checksum=denylist.checksum, size=len(denylist),
                              sha256=hashlib.sha256(denylist.to_bytes()).hexdigest(), time=datetime.now(UTC))
    await distributor.publisher.publish(Topics(prefix).denylist_snapshot_ref, ref, retain=True)
    return version, len(payload), sent


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _first_at_or_after(applied: dict[int, float], version: int, final: int) -> float | None:
    """When a gate first held deny-list version `version` or a later one below `final` (None: never;
    the final snapshot sent after the taps would hold every block, so it does not count)."""
    times = [at for v, at in applied.items() if version <= v < final]
    return min(times) if times else None


def _figures(args: argparse.Namespace, reports: list[GateReport], blocks: dict[int, float], snapshot: int,
             snapshot_bytes: int, snapshot_sent: float, tapped: float, span: float) -> dict[str, Any]:
    # A gate holds block v from the first deny-list version >= v it applied: the delta of v itself, or a
    # later delta or snapshot when it missed v's (every later version carries the block: the bench
    # never unblocks). The final snapshot, sent after the taps, does not count.
    held = [(_first_at_or_after(r.applied, v, snapshot), called) for v, called in blocks.items()
            for r in reports]
    latencies = [(at - called) * 1000 for at, called in held if at is not None]
    missed = sum(1 for at, _ in held if at is None)
    missed_delta = sum(1 for v in blocks for r in reports if v not in r.applied)
    arrivals = [(r.received[v] - called) * 1000 for v, called in blocks.items() for r in reports
                if v in r.received]
    verify = [(r.applied[v] - r.received[v]) * 1000 for v in blocks for r in reports
              if v in r.applied and v in r.received]
    have_snapshot = [r.applied[snapshot] - snapshot_sent for r in reports if snapshot in r.applied]
    made = sum(r.made for r in reports)
    committed = sum(min(r.committed, r.made) for r in reports)
    return {
        "gates": len(reports),
        "made": made,
        "tap_seconds": round(tapped, 3),
        "offered_taps_per_s": round(made / tapped),
        "taps_per_s": round(committed / span),  # stored and acknowledged, from the start to the last ack
        "uncommitted_at_end": made - committed,
        "last_ack_after_taps_s": round(span - tapped, 3),  # from the last tap to the last gate's ack
        "publishes": sum(r.publishes for r in reports),
        "statuses": sum(r.statuses for r in reports),
        "blocks": len(blocks),
        "deny_propagation_ms_p50": round(_percentile(latencies, 0.5), 1),
        "deny_propagation_ms_p99": round(_percentile(latencies, 0.99), 1),
        "deny_propagation_ms_max": round(max(latencies), 1) if latencies else None,
        "deny_propagation_ms_mean": round(statistics.fmean(latencies), 1) if latencies else None,
        "deny_missed": missed,  # block x gate not held before the final snapshot
        "deny_delta_missed": missed_delta,  # ... whose own delta the gate never applied
        # where the time goes: the delta's arrival at the gate's process (broker path and the
        # simulating process's queue), then the gate's own parse, verify and apply
        "deny_arrival_ms_p50": round(_percentile(arrivals, 0.5), 1),
        "deny_arrival_ms_p99": round(_percentile(arrivals, 0.99), 1),
        "deny_verify_apply_ms_p99": round(_percentile(verify, 0.99), 2),
        "snapshot_ids": args.snapshot_ids,
        "snapshot_bytes": snapshot_bytes,
        "snapshot_fanout_s": round(max(have_snapshot), 3) if len(have_snapshot) == len(reports) else None,
        "snapshot_fanout_p50_s": round(_percentile(have_snapshot, 0.5), 3),
        "snapshot_missing": len(reports) - len(have_snapshot),
        "refused": sum(r.refused for r in reports),
        "snapshot_requests": sum(r.snapshot_requests for r in reports),
        # times a gate took the retained snapshot: at connect with no list, behind the final one's
        # reference, after a missed delta; never for a block it got by delta (protocol.mqtt.follow)
        "snapshot_subscriptions": sum(r.snapshot_subscriptions for r in reports),
        "reconnects": sum(max(0, r.connects - 1) for r in reports),
    }
