"""Station servers: a Mosquitto per station, bridged to the centre with a persistent queue (or, to the
NATS cluster, linked by a relay instead of a bridge: `write_station(..., relay_password=...)`,
backend/relay.py; what follows about the bridge's account then holds for the relay's at its station).

    gates of station 12 ──(own login, own topics)──► station server 12 ──bridge "station-12"──► centre
                                                     (persistence, queue)    (cleansession false, QoS 1)

A gate logs in to its station's broker as its gate id, with the same per-gate ACL the centre uses
(backend.deploy.acl). The station's bridge logs in to the centre as `station-<id>` and carries only its
own gates' topics: out, each gate's taps, status and requests; in, each gate's committed, resend and
command topics and the shared deny-list, fare-table and action topics. The centre's ACL gives that
account exactly those topics, so a station server, even a compromised one, cannot publish as a gate of
another station nor read another station's acks or commands (tests/city/test_station.py).

While the centre is unreachable the bridge's local session (cleansession false, so local_cleansession
false too) queues the gates' publishes at the station, up to STATION_MAX_QUEUED_MESSAGES /
STATION_MAX_QUEUED_BYTES, and saves them to disk (persistence, every PERSIST_EVERY changes and on
shutdown); the gates keep getting PUBACKs from their station and keep every tap in their journals until
the backend's signed ack comes back. When the link returns the queue drains to the centre in order;
the ingest stores by tap id, so a tap sent twice (a gate's stall replay, a redelivery) is stored once.
Past the queue limits the station drops new publishes for the bridge: nothing is lost, since the gates
replay what stays unacknowledged, but each replay costs link time (docs/deployment.md, "Station
servers", has the sizing and the measured catch-up).

The end-to-end signatures still hold across a station: taps carry the gate's MAC (a station cannot make
or alter one), downlink messages the backend's Ed25519 signature (a station cannot forge a block,
unblock, fare table, command or ack). What a compromised station server can do: read its own gates'
traffic, drop or delay it (the gates' journals keep the taps; their status goes stale at the centre),
replay old genuine messages to its gates (versions and ack bounds make them no-ops), and publish junk on
its own gates' topics at the centre (dead-lettered, alarmed). It cannot touch another station's topics.
"""

from __future__ import annotations

import contextlib
import getpass
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from backend.broker import free_port
from backend.deploy.acl import acl_rules
from backend.deploy.mosquitto_config import write_config
from backend.relay import RELAY_USER
from faregate.city.launch import kill_group, open_group, stop_group, wait_port
from protocol.mqtt import Topics, gate_id

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

# Queue sizing at a station (the bridge's local session is the one queue that grows in an outage).
# A station of 50 gates at the design's peak of 60 taps a minute a gate makes 50 taps/s; a gate sends a
# live tap as one message of ~1 KB, its backlog in arrays of 50. 1,000,000 messages hold 5.5 hours of
# peak single-tap traffic (far more off-peak or as arrays); 1 GiB bounds the memory the queue may take.
STATION_MAX_QUEUED_MESSAGES = 1_000_000
STATION_MAX_QUEUED_BYTES = 1024 * 1024 * 1024
PERSIST_EVERY = 1000  # queue changes between saves to disk (autosave_on_changes)
# The bridge's reconnect back-off (Mosquitto's restart_timeout base cap: it grows from base to cap, with
# jitter, so the stations do not all return at the same instant). The cap bounds how long after the
# centre's return a station's backlog still waits: measured with 200 gates on 4 stations after a 6 s
# outage, the backlog drained 1.5 s after the first commit with a cap of 2 s and 9.6 s with 10 s
# (docs/deployment.md, "Station servers"). At 2 s, 1,000 stations retry a dead centre 500 times a second.
BRIDGE_RETRY_S = (1, 2)

# NATS_BRIDGE: on nats-server 2.9's MQTT gateway every QoS 1 subscription is a JetStream consumer (made
# through the JetStream API on every connection, R1 on the $MQTT_msgs stream) and a persistent session a
# record in a replicated stream. A station subscribes 3 topics a gate plus 3, so a bridge that lost its
# node had to remake one consumer a topic (63 for 20 gates) while the cluster elected leaders; the API
# calls timed out (4 s), the node closed the bridge, and it went round the nodes without staying up
# (measured, 60 gates on 3 stations, the stream's leader killed -9: cleansession false with QoS 1 never
# recovered within 120 s, cleansession true with QoS 1 cycled through the nodes every 6-7 s).
# Subscribing the downlink at QoS 0 makes them plain NATS subscriptions: the bridge on the killed node
# was on the next one within 2 s and every tap was stored once (with cleansession true or false; clean
# is kept, since a QoS 0 subscriber has nothing queued at the centre to keep). Nothing is lost by QoS 0
# here: acks, commands, the fare table, action list and deny-list snapshot are retained (sent again on
# every subscription), a delta missed in a reconnection is covered by the retained snapshot of its
# version, a resend request by the gates' stall replay. The uplink (taps) stays QoS 1 with the station's
# persistent local queue. Failover needs no tuning beyond restart_timeout: a node killed -9 refuses the
# connection at once; a host that vanishes is noticed after 1.5 keepalive intervals (15 s at 10 s).

def bridge_user(station_id: int) -> str:
    """The account a station's bridge logs in to the centre with."""
    return f"station-{station_id}"


def _gate_ids(station_id: int, gate_nos: Sequence[int]) -> list[str]:
    return [gate_id(station_id, no) for no in gate_nos]


def gate_pattern_lines(prefix: str) -> list[str]:
    """The per-gate ACL pattern lines (%u is the gate id), the same lines the centre's ACL holds."""
    return [f"pattern {r.access} {r.topic}" for r in acl_rules(prefix, "unused") if r.user is None]


def bridge_topics(topics: Topics, station_id: int, gate_nos: Sequence[int]) -> list[tuple[str, str]]:
    """(direction, topic) of everything a station's bridge carries, seen from the station."""
    lines: list[tuple[str, str]] = []
    for gate in _gate_ids(station_id, gate_nos):
        lines += [("out", topics.taps(gate)), ("out", topics.status(gate)), ("out", topics.request(gate))]
        lines += [("in", topics.committed(gate)), ("in", topics.resend(gate)), ("in", topics.command(gate))]
    lines += [("in", f"{topics.prefix}/denylist/#"), ("in", topics.fare_table), ("in", topics.actions)]
    return lines


def relay_acl(topics: Topics) -> list[str]:
    """A station relay's ACL lines at its station: the gates' uplink read, their downlink written."""
    uplink = [topics.all_taps, topics.all_status, topics.all_requests]
    downlink = [topics.committed("+"), topics.resend("+"), topics.command("+"), f"{topics.prefix}/denylist/#",
                topics.fare_table, topics.actions]
    # the gates' `pattern` lines apply to every user: with %u = the relay's name they would let it
    # publish as a gate of that name, which its own uplink subscription would then forward
    own = f"topic deny {topics.prefix}/gates/{RELAY_USER}/#"
    return [own] + [f"topic read {t}" for t in uplink] + [f"topic write {t}" for t in downlink]


def centre_station_acl(topics: Topics, station_id: int, gate_nos: Sequence[int]) -> str:
    """The centre's ACL lines for one station's bridge account: its own gates' topics and nothing else."""
    lines = [f"user {bridge_user(station_id)}"]
    for direction, topic in bridge_topics(topics, station_id, gate_nos):
        lines.append(f"topic {'write' if direction == 'out' else 'read'} {topic}")
    return "\n".join(lines) + "\n"


def _add_password(passwd: Path, user: str, password: str) -> None:
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True, capture_output=True)


@dataclass
class BrokerFiles:
    """A written broker configuration: where its files are and the accounts it knows."""

    directory: Path
    port: int
    passwords: dict[str, str] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.directory / "mosquitto.conf"


def write_centre(
    out: Path,
    prefix: str,
    port: int,
    backend_user: str,
    backend_password: str,
    stations: Mapping[int, Sequence[int]],
    direct_gates: Sequence[str] = (),
    run_as: str | None = None,
) -> BrokerFiles:
    """The central broker: the shipped configuration (backend account, gate ACL) plus one bridge
    account per station limited to that station's gates. `direct_gates` log in at the centre itself
    (today's single-broker path, the benchmark's baseline)."""
    passwords = write_config(out, prefix, list(direct_gates), backend_user, backend_password, port=port,
                             run_as=run_as or getpass.getuser())
    topics = Topics(prefix)
    acl = out / "faregate.acl"
    text = acl.read_text()
    for station_id, gate_nos in stations.items():
        password = secrets.token_urlsafe(18)
        _add_password(out / "faregate.passwd", bridge_user(station_id), password)
        passwords[bridge_user(station_id)] = password
        text += "\n" + centre_station_acl(topics, station_id, gate_nos)
    acl.write_text(text)
    passwords[backend_user] = backend_password
    return BrokerFiles(out, port, passwords)


def write_station(
    out: Path,
    prefix: str,
    station_id: int,
    gate_nos: Sequence[int],
    port: int,
    centre: tuple[str, int],
    bridge_password: str,
    gate_passwords: dict[str, str] | None = None,
    run_as: str | None = None,
    max_queued_messages: int = STATION_MAX_QUEUED_MESSAGES,
    max_queued_bytes: int = STATION_MAX_QUEUED_BYTES,
    centre_is_mosquitto: bool = True,
    more_centres: Sequence[tuple[str, int]] = (),
    remote_cleansession: bool | None = None,
    downlink_qos: int | None = None,
    relay_password: str | None = None,
) -> BrokerFiles:
    """A station server's mosquitto.conf, password file and ACL in `out`; returns its gates' passwords.

    The gates' accounts and ACL are the centre's (each gate its own topics); there is no other local
    account: the bridge is configured here, not a login. `centre` (host, port), then `more_centres` (the
    other MQTT listeners of a clustered centre): the bridge uses the first that answers, in order, and
    moves on when it is lost. `centre_is_mosquitto` False for any other engine (NATS's MQTT gateway,
    RabbitMQ): Mosquitto's private bridge handshake is then not tried.

    `remote_cleansession` and `downlink_qos` (the centre's side of the bridge session, and the QoS the
    bridge subscribes the centre's topics at) default to the settings for the centre's engine: for
    Mosquitto a persistent session at QoS 1; for a clustered centre (NATS) a clean session and QoS 0
    downlink: with QoS 1 downlink a bridge did not survive the loss of its node (see NATS_BRIDGE).

    `relay_password`: the station is linked to a clustered centre by a relay (backend/relay.py,
    `faregate relay`), both ways, and has no bridge: the station gets the account RELAY_USER, which may
    read its gates' taps, statuses and requests and write their downlink topics (so whoever holds its
    password can also clear or replace what the station retains for its gates, as the station server
    itself could; the gates check every message against the backend's key)."""
    out.mkdir(parents=True, exist_ok=True)
    gates = _gate_ids(station_id, gate_nos)
    passwords = {g: (gate_passwords or {}).get(g) or secrets.token_urlsafe(18) for g in gates}
    passwd = out / "faregate.passwd"
    passwd.touch(0o600)
    passwd.chmod(0o600)
    accounts = {**passwords, **({RELAY_USER: relay_password} if relay_password else {})}
    passwd.write_text("".join(f"{user}:{password}\n" for user, password in accounts.items()))
    subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, capture_output=True)
    topics = Topics(prefix)
    acl = out / "faregate.acl"
    relay_lines = ([f"user {RELAY_USER}", *relay_acl(topics), ""] if relay_password else [])
    acl.write_text("# written by faregate.city.station: every user is a gate of this station"
                   + (f", but {RELAY_USER}" if relay_password else "") + "\n"
                   + "\n".join([*relay_lines, *gate_pattern_lines(prefix)]) + "\n")
    addresses = [centre, *more_centres]
    user = bridge_user(station_id)
    remote_clean = (not centre_is_mosquitto) if remote_cleansession is None else remote_cleansession
    in_qos = (1 if centre_is_mosquitto else 0) if downlink_qos is None else downlink_qos
    bridge = [
        f"connection {user}",
        "address " + " ".join(f"{host}:{port}" for host, port in addresses),
        f"remote_clientid {user}",
        f"remote_username {user}",
        f"remote_password {bridge_password}",
        # The station keeps what is queued for the centre (taps) across outages and restarts
        # (local_cleansession false). On a Mosquitto centre the session there is persistent too (acks,
        # commands queued for the station); on a clustered centre it is clean (see NATS_BRIDGE).
        f"cleansession {'true' if remote_clean else 'false'}",
        "local_cleansession false",
        "bridge_protocol_version mqttv311",
        # Mosquitto to Mosquitto: the centre knows the bridge, and retained flags cross as published
        f"try_private {'true' if centre_is_mosquitto else 'false'}",
        "start_type automatic",
        f"restart_timeout {BRIDGE_RETRY_S[0]} {BRIDGE_RETRY_S[1]}",  # reconnect back-off, with jitter
        "keepalive_interval 10",
        "notifications true",
        "notifications_local_only true",
        *(f"topic {topic} {direction} {1 if direction == 'out' else in_qos}"
          for direction, topic in bridge_topics(topics, station_id, gate_nos)),
    ]
    conf = [
        f"# station server {station_id}: written by faregate.city.station",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {passwd}",
        f"acl_file {acl}",
        f"listener {port} 127.0.0.1",
        "persistence true",
        f"persistence_location {out}/",
        "autosave_on_changes true",
        f"autosave_interval {PERSIST_EVERY}",
        f"max_queued_messages {max_queued_messages}",
        f"max_queued_bytes {max_queued_bytes}",
        "max_inflight_messages 1000",
        "max_packet_size 34603008",  # as the centre: protocol.mqtt.MAX_MESSAGE_BYTES + 1 MiB
        f"user {run_as or getpass.getuser()}",
        "",
        *([] if relay_password else bridge),
        "",
    ]
    (out / "mosquitto.conf").write_text("\n".join(conf))
    return BrokerFiles(out, port, passwords)


# --- running them --------------------------------------------------------------------------------------


class Mosquitto:
    """One Mosquitto process on a written configuration: start, stop (saves its queue), kill -9."""

    def __init__(self, files: BrokerFiles) -> None:
        self.files = files
        self.process: subprocess.Popen[bytes] | None = None
        self.log = files.directory / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.files.port}"

    def start(self, timeout: float = 15.0) -> None:
        self.process = open_group([MOSQUITTO, "-c", str(self.files.conf)], self.log)
        if not wait_port(self.process, self.files.port, timeout):
            self.stop()
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"mosquitto on port {self.files.port} did not start: {tail}")

    def stop(self) -> None:
        """SIGTERM: Mosquitto writes its persistence file (retained messages, sessions, queues) first."""
        if self.process is not None:
            stop_group(self.process, 15, kill_wait=5)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: whatever was not yet saved is gone (the gates' journals still hold their taps)."""
        if self.process is not None:
            kill_group(self.process, 5)
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class StationServer:
    station_id: int
    gate_nos: list[int]
    broker: Mosquitto

    @property
    def passwords(self) -> dict[str, str]:
        return self.broker.files.passwords

    @property
    def port(self) -> int:
        return self.broker.files.port


@dataclass
class City:
    """A centre broker and its station servers, all on loopback, each with its own directory."""

    prefix: str
    backend_user: str
    backend_password: str
    centre: Mosquitto
    stations: dict[int, StationServer]

    @property
    def centre_url(self) -> str:
        """The backend's URL (with its credentials) at the centre."""
        return f"mqtt://{self.backend_user}:{self.backend_password}@127.0.0.1:{self.centre.files.port}"


@contextlib.contextmanager
def run_city(
    directory: Path,
    prefix: str,
    stations: Mapping[int, Sequence[int]],
    *,
    direct_gates: Sequence[str] = (),
    backend_user: str = "faregate-backend",
    max_queued_messages: int = STATION_MAX_QUEUED_MESSAGES,
) -> Iterator[City]:
    """Write and start a centre and one station server per station (free loopback ports); every
    process is stopped on the way out, failure or not."""
    backend_password = secrets.token_urlsafe(18)
    brokers: list[Mosquitto] = []
    try:
        centre_files = write_centre(directory / "centre", prefix, free_port(), backend_user, backend_password,
                                    stations, direct_gates)
        centre = Mosquitto(centre_files)
        brokers.append(centre)
        centre.start()
        servers: dict[int, StationServer] = {}
        for station_id, gate_nos in stations.items():
            files = write_station(directory / f"station-{station_id}", prefix, station_id, gate_nos,
                                  free_port(), ("127.0.0.1", centre_files.port),
                                  centre_files.passwords[bridge_user(station_id)],
                                  max_queued_messages=max_queued_messages)
            broker = Mosquitto(files)
            brokers.append(broker)
            broker.start()
            servers[station_id] = StationServer(station_id, list(gate_nos), broker)
        yield City(prefix, backend_user, backend_password, centre, servers)
    finally:
        for broker in reversed(brokers):
            broker.stop()
