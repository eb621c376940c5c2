"""The central broker cluster, started for real on loopback: three nats-server nodes (JetStream, R3
storage, each with the MQTT gateway the gates publish to), and the one stream the ingest workers pull.

    gates ──MQTT 3.1.1 QoS 1──► any node's MQTT gateway ──subject <prefix>.gates.<gate>.taps──►
        stream FAREGATE_UPLINK (file storage, 3 replicas, RAFT) ──durable pull consumer "ingest"──►
        ingest workers (ack after the database commit); their Committed / ResendRequest go back to the
        gates through a node's MQTT gateway, retained where the contract says so.

Every node writes its configuration, JetStream store and log under its own directory; ports are taken
free from the kernel. A node is a process group of its own, so `kill(node)` is a real kill -9 and
`stop()` ends every node even when a test failed. Nothing here is used by gate/ or backend/: the
backend reaches the stream only through its URL (`faregate backend --ingest-from nats://...`).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from backend.deploy.private import write_private
from backend.mqtt import BrokerAddress
from backend.relay_cli import NATS_ENV
from faregate.city.cluster_auth import ADMIN_USER, BACKEND_USER, ClusterAccounts
from faregate.city.cluster_tls import ClusterCertificates
from faregate.city.launch import Launched, kill_group, open_group, rss_bytes, terminate_group, wait_group
from faregate.simgate import SimGate, SimUplink
from protocol.mqtt import Topics, gate_id, parse_gate_id

NATS_SERVER = "nats-server"
CLUSTER_NAME = "faregate"


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports the kernel says are free now (bound together, then released)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


@dataclass
class NatsNode:
    name: str
    client_port: int
    cluster_port: int
    mqtt_port: int
    http_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def config(self, routes: list[int], replicas: int, accounts: ClusterAccounts | None = None,
               tls: ClusterCertificates | None = None) -> str:
        route_urls = [accounts.route_url(port) if accounts else f"nats-route://127.0.0.1:{port}"
                      for port in routes]
        client_tls = tls.block() if tls else ""  # clients must speak TLS; the nodes' cert from the CA
        route_tls = tls.block(verify=True) if tls else ""  # each route shows the CA's certificate
        route_list = ", ".join(json.dumps(url) for url in route_urls)
        store = json.dumps(str(self.directory / "jetstream"))
        users = accounts.authorization() if accounts else ""
        route_auth = accounts.route_authorization() if accounts else ""
        return f"""
server_name: {self.name}
listen: 127.0.0.1:{self.client_port}
http: 127.0.0.1:{self.http_port}
max_payload: 2MB
{client_tls}
{users}
jetstream {{
  store_dir: {store}
  max_memory_store: 64MB
  max_file_store: 2GB
}}
cluster {{
  name: {CLUSTER_NAME}
  listen: 127.0.0.1:{self.cluster_port}
  {route_auth}
  {route_tls}
  routes: [{route_list}]
}}
mqtt {{
  listen: 127.0.0.1:{self.mqtt_port}
  stream_replicas: {replicas}
  ack_wait: "30s"
  max_ack_pending: 1000
  consumer_replicas: 1
  consumer_memory_storage: true
}}
"""

    def rss_bytes(self) -> int:
        """Resident memory of the node's process (from /proc, as `ps` reads it)."""
        return 0 if self.process is None else rss_bytes(self.process.pid)


@dataclass
class NatsCluster(Launched):
    """Three (or `size`) nats-server nodes clustered on loopback with JetStream and the MQTT gateway.
    Ports are free ones from the kernel, or from `base_port` up: node n (1..) takes base + 4(n-1) for
    clients, + 1 for routes, + 2 for MQTT, + 3 for monitoring."""

    directory: Path
    size: int = 3
    base_port: int | None = None
    accounts: ClusterAccounts | None = None  # passwords and permissions; None: anyone may connect
    tls: ClusterCertificates | None = None  # TLS on client connections and routes; None: plain TCP
    nodes: list[NatsNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        if shutil.which(NATS_SERVER) is None:
            raise FileNotFoundError("nats-server is not installed (Debian: apt-get install nats-server)")
        count = 4 * self.size
        base = self.base_port
        ports = free_ports(count) if base is None else list(range(base, base + count))
        for index in range(self.size):
            client, route, mqtt, http = ports[4 * index : 4 * index + 4]
            name = f"n{index + 1}"
            self.nodes.append(NatsNode(name, client, route, mqtt, http, self.directory / name))

    @property
    def urls(self) -> list[str]:
        """Every node's client URL, as the backend logs in (its password in it when accounts are on)."""
        if self.accounts is None:
            return self.urls_as()
        return self.urls_as(BACKEND_USER, self.accounts.backend_password)

    @property
    def scheme(self) -> str:
        return "tls" if self.tls else "nats"

    def urls_as(self, user: str | None = None, password: str | None = None) -> list[str]:
        """Every node's client URL, logged in as `user` (none: without a login)."""
        login = f"{user}:{password}@" if user else ""
        return [f"{self.scheme}://{login}127.0.0.1:{node.client_port}" for node in self.nodes]

    @property
    def mqtt_urls(self) -> list[str]:
        return [node.mqtt_url for node in self.nodes]

    @property
    def ingest_url(self) -> str:
        """Every node's client URL, comma-separated: what `--ingest-from` takes (nats-py fails over)."""
        return ",".join(self.urls)

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            self.start_node(node)
        self.wait_ready(timeout)

    def start_node(self, node: NatsNode) -> None:
        node.directory.mkdir(parents=True, exist_ok=True)
        routes = [other.cluster_port for other in self.nodes if other is not node]
        conf = node.directory / "nats.conf"
        conf.write_text(node.config(routes, min(3, self.size), self.accounts, self.tls))
        # a process group of its own: killed alone, never with the test
        node.process = open_group([NATS_SERVER, "-c", str(conf)], node.directory / "nats.log")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every live node answers /healthz with JetStream ready (a meta leader elected)."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if not node.alive:
                continue
            url = f"http://127.0.0.1:{node.http_port}/healthz"
            while True:
                try:
                    with urllib.request.urlopen(url, timeout=2) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    pass
                if not node.alive:
                    raise RuntimeError(f"nats node {node.name} exited: see {node.directory / 'nats.log'}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nats node {node.name} not ready within {timeout} s")
                time.sleep(0.1)

    def kill(self, node: NatsNode) -> None:
        """kill -9 the node's process group (no shutdown, no flush: a power cut)."""
        if node.process is not None:
            kill_group(node.process)

    def stop(self) -> None:
        """SIGTERM every node at once, then wait 10 s for each (kill -9 past that)."""
        running = [node.process for node in self.nodes if node.process is not None]
        for process in running:
            terminate_group(process)
        for process in running:
            wait_group(process, 10)


class FailoverUplink(SimUplink):
    """Simulated gates that, like a gate configured with every node of the cluster, reconnect to the
    next node when theirs is gone (a real gate's broker list; SimUplink itself knows one address)."""

    def __init__(self, urls: list[str], topics: Topics, gates: Iterable[SimGate], *, downlink_qos: int = 0,
                 **options: Any) -> None:
        super().__init__(urls[0], topics, gates, **options)
        self.addresses = [BrokerAddress.parse(url) for url in urls]
        self.downlink_qos = downlink_qos
        self._node = 0
        self.failovers = 0

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        """As SimUplink's, subscribing at `downlink_qos`. Through nats-server's MQTT gateway every QoS 1
        subscription is a JetStream consumer, and a clean session's reconnection deletes its old ones and
        makes new ones through the JetStream API, whose calls time out (4 s each, in the nodes' logs)
        while the cluster elects a leader after a node's loss. So the simulated gates take their acks at
        QoS 0 here: the retained ack still arrives on every (re)subscription and a lost one is made good
        by the next or by a replay (docs/deployment.md, "Central broker")."""
        if reason.is_failure:
            self.refused = reason
            return
        self.connected.set()
        for gate in self.gates.values():
            gate.rewind()
        filters = self._subscriptions
        self._suback_due = -(-len(filters) // self.SUBSCRIBE_CHUNK)
        if not filters:
            self.subscribed.set()
        for start in range(0, len(filters), self.SUBSCRIBE_CHUNK):
            chunk = filters[start : start + self.SUBSCRIBE_CHUNK]
            client.subscribe([(topic, self.downlink_qos) for topic in chunk])

    def _network(self, timeout: float) -> None:
        if self.client.loop(timeout) in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            return
        self.connected.clear()
        if self._closing:
            return
        time.sleep(max(timeout, 0.01))
        if self.refused is None and time.monotonic() - self._last_reconnect > 0.5:
            self._last_reconnect = time.monotonic()
            self._node = (self._node + 1) % len(self.addresses)
            address = self.addresses[self._node]
            self.failovers += 1
            with contextlib.suppress(OSError):
                self.client.connect(address.host, address.port, keepalive=self.keepalive)


def expand_gates(spec: str) -> list[str]:
    """"101-1..8,102-3" -> ["101-1", ..., "101-8", "102-3"]: a relay's gates on the command line."""
    gates: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        first, _, last = part.partition("..")
        station, gate_no = parse_gate_id(first)
        stop = int(last) if last else gate_no
        if not gate_no <= stop <= 0xFF:
            raise ValueError(f"not a gate range: {part!r}")
        gates += [gate_id(station, no) for no in range(gate_no, stop + 1)]
    return gates


def write_credentials(cluster: NatsCluster, directory: Path) -> Path:
    """Every account's login, for the processes that start next (mode 0600: passwords belong in files
    and the environment, never on a command line or a screen): `directory`/accounts.json, all of them
    (the admin's, for maintenance, only there);
    backend.env, the workers' and backend's environment (FAREGATE_INGEST_FROM, FAREGATE_MQTT_URL: the
    first MQTT gateway); relay-<name>.env, each relay's FAREGATE_RELAY_NATS; with TLS, both with
    FAREGATE_NATS_CA_FILE, the CA the nodes' certificate is checked against."""
    accounts = cluster.accounts
    assert accounts is not None
    backend_mqtt = [f"mqtt://{BACKEND_USER}:{accounts.backend_password}@127.0.0.1:{node.mqtt_port}"
                    for node in cluster.nodes]
    admin = ",".join(cluster.urls_as(ADMIN_USER, accounts.admin_password))
    doc = {"admin": {"user": ADMIN_USER, "nats": admin},
           "backend": {"user": BACKEND_USER, "nats": cluster.ingest_url, "mqtt": backend_mqtt},
           "relays": {name: {"gates": relay.gates,
                             "nats": ",".join(cluster.urls_as(relay.user, relay.password))}
                      for name, relay in accounts.relays.items()}}
    ca = f"FAREGATE_NATS_CA_FILE={cluster.tls.ca_file.resolve()}\n" if cluster.tls else ""
    write_private(directory / "backend.env",
             f"FAREGATE_INGEST_FROM={cluster.ingest_url}\nFAREGATE_MQTT_URL={backend_mqtt[0]}\n{ca}")
    for name, relay in accounts.relays.items():
        write_private(directory / f"relay-{name}.env",
                 f"{NATS_ENV}={','.join(cluster.urls_as(relay.user, relay.password))}\n{ca}")
    path = directory / "accounts.json"
    write_private(path, json.dumps(doc, indent=1))
    return path


def main() -> int:
    """`python3 -m faregate.city.cluster --dir DIR [--base-port P] [--relay NAME=GATES ...] [--open]`:
    run the three nodes until Ctrl-C, with accounts unless `--open` (docs/deployment.md)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python3 -m faregate.city.cluster")
    parser.add_argument("--dir", type=Path, required=True, help="configuration, JetStream data and logs")
    parser.add_argument("--base-port", type=int, help="ports from here up (default: free ones)")
    parser.add_argument("--prefix", default="faregate", help="the topic prefix the accounts are for")
    parser.add_argument("--relay", action="append", default=[], metavar="NAME=GATES",
                        help="a station relay's account and the gates it serves, e.g. r1=101-1..8,102-1..8 "
                             "(repeat for each relay)")
    parser.add_argument("--tls", action="store_true",
                        help="TLS on client connections and routes: a CA and the nodes' certificate are made "
                             "in DIR/tls; clients trust DIR/tls/ca.pem (FAREGATE_NATS_CA_FILE)")
    parser.add_argument("--open", action="store_true",
                        help="no accounts: any client and any node may connect (the station-bridge path "
                             "through the MQTT gateways, whose logins are not done, needs it)")
    args = parser.parse_args()
    accounts = None
    if not args.open:
        accounts = ClusterAccounts(args.prefix)
        for relay in args.relay:
            name, _, gates = relay.partition("=")
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name.strip()):
                parser.error(f"--relay {relay!r}: a name of letters, digits, - and _, then =GATES")
            try:
                accounts.add_relay(name.strip(), expand_gates(gates))
            except ValueError as exc:
                parser.error(f"--relay {relay!r}: {exc}")
    elif args.relay:
        parser.error("--relay needs accounts: leave out --open")
    tls = ClusterCertificates.make(args.dir / "tls") if args.tls else None
    cluster = NatsCluster(args.dir, base_port=args.base_port, accounts=accounts, tls=tls)

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a background job inherits it ignored
        signal.signal(signum, interrupt)
    with cluster:
        print("nats (ingest --ingest-from):", ",".join(cluster.urls_as()))
        print("mqtt gateways (gates, --ingest-downlink):", ",".join(cluster.mqtt_urls))
        if accounts is not None:
            print("logins (the backend's, each relay's):", write_credentials(cluster, args.dir))
        else:
            print("open: no accounts, anyone who reaches these ports may connect")
        if tls is not None:
            print("tls: clients trust", tls.ca_file)
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            while any(node.alive for node in cluster.nodes):
                time.sleep(1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def wait_committed(uplinks: list[FailoverUplink], timeout: float, poll: float = 0.05) -> bool:
    """Until every uplink's gates hold the backend's ack for every tap they made (True), or `timeout`
    seconds have passed (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(uplink.all_committed() for uplink in uplinks):
            return True
        time.sleep(poll)
    return False
