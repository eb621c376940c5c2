"""A three-node RabbitMQ cluster on one machine, for the central-broker comparison (docs/deployment.md,
"Central broker"): Debian's rabbitmq-server 3.10 with its MQTT plugin, each node with its own node name,
ports (AMQP, distribution, MQTT), data and log directories, configuration and enabled-plugins file, and
its own HOME (so its Erlang cookie is the cluster's, not the machine's RabbitMQ's). Nodes 2 and 3 join
node 1 with rabbitmqctl. MQTT subscriptions with a persistent session get quorum queues
(`mqtt.durable_queue_type = quorum`), replicated on every node.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from faregate.city.cluster import free_ports
from faregate.city.launch import Launched, kill_group, open_group, session_rss_bytes

SBIN = Path("/usr/lib/rabbitmq/lib/rabbitmq_server-3.10.8/sbin")
COOKIE = "faregatecitycomparisoncookie"


@dataclass
class RabbitNode:
    name: str
    amqp_port: int
    dist_port: int
    mqtt_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def node(self) -> str:
        return f"{self.name}@localhost"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def env(self) -> dict[str, str]:
        d = self.directory
        return dict(
            os.environ,
            HOME=str(d),
            RABBITMQ_CONF_ENV_FILE=str(d / "env.conf"),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(d / "pid"),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )

    def write_files(self) -> None:
        d = self.directory
        for sub in ("mnesia", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "env.conf").write_text("")
        (d / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (d / ".erlang.cookie").write_text(COOKIE)
        (d / ".erlang.cookie").chmod(0o400)
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}\n"
            "mqtt.allow_anonymous = true\n"
            "mqtt.durable_queue_type = quorum\n"
            "loopback_users = none\n"
        )

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        done = subprocess.run([str(SBIN / "rabbitmqctl"), "-n", self.node, *args], env=self.env(),
                              capture_output=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.node}: {done.stderr.decode()[-800:]}")
        return done.stdout.decode()

    def rss_bytes(self) -> int:
        """Resident memory of the node's session (the Erlang VM and its helpers), as `ps -g` reads it."""
        if not self.alive or self.process is None:
            return 0
        return session_rss_bytes(self.process.pid)


@dataclass
class RabbitCluster(Launched):
    directory: Path
    size: int = 3
    nodes: list[RabbitNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (SBIN / "rabbitmq-server").exists():
            raise FileNotFoundError("rabbitmq-server 3.10.8 is not installed (Debian: rabbitmq-server)")
        ports = free_ports(3 * self.size)
        for index in range(self.size):
            amqp, dist, mqtt = ports[3 * index : 3 * index + 3]
            name = f"fgr{os.getpid()}n{index + 1}"
            self.nodes.append(RabbitNode(name, amqp, dist, mqtt, self.directory / f"n{index + 1}"))

    @property
    def mqtt_urls(self) -> list[str]:
        return [node.mqtt_url for node in self.nodes]

    def start(self, timeout: float = 120.0) -> None:
        for node in self.nodes:
            node.write_files()
            node.process = open_group([str(SBIN / "rabbitmq-server")], node.directory / "out.log", node.env(),
                                      append=False)
        for node in self.nodes:
            self._wait(node, timeout)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.node)
            node.ctl("start_app")

    def _wait(self, node: RabbitNode, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                node.ctl("await_startup", timeout=30)
                return
            except (RuntimeError, subprocess.TimeoutExpired):
                if not node.alive:
                    log = node.directory / "out.log"
                    raise RuntimeError(f"rabbitmq node {node.name} exited: see {log}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rabbitmq node {node.name} not up within {timeout} s") from None
                time.sleep(1)

    def kill(self, node: RabbitNode) -> None:
        if node.process is not None:
            kill_group(node.process)

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    kill_group(node.process)  # a comparison's throwaway data: no orderly shutdown
