"""The backend's messages to the gates as NATS publishes on the cluster (`--publish-nats`), for a city
whose stations are linked by relays (docs/deployment.md, "Station relays").

Why not the cluster's MQTT gateway: a QoS 1 publish there waits for the gateway's own replicated write,
and the operator's block call waited 4.2-9.4 s for its PUBACK while JetStream elected a leader after a
node was killed (the session-7 city bench), the block held behind it. Here:

- state (the deny-list snapshot and its reference, the fare table, the action list, a gate's command) is
  published into FAREGATE_STATE and returns on JetStream's acknowledgement: stored on a majority, so a
  relay away meanwhile fetches it when it is back;
- everything else (the deny-list delta first: the block itself) is a plain publish confirmed by a flush
  (the node has it): every relay subscribed gets it at once, no election on the way. A relay away misses
  it and catches up from the state, as a gate that misses a delta does from its snapshot.

Gates connected to the cluster's MQTT gateway directly would not get this state retained there: with
`--publish-nats` the gates are behind station servers, whose relays keep it retained.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nats.errors import Error as NatsError

from protocol.mqtt import Topics
from protocol.mqtt.address import for_log

from .ingest.stream import connect_cluster, ensure_stream, nats_servers, subject_of
from .state_stream import STATE_STREAM, is_stored_state, state_stream_config

log = logging.getLogger("faregate.publisher")

RETRY_MIN_S, RETRY_MAX_S = 0.2, 5.0


class NatsPublisherLink:
    """One nats-py connection to the cluster (failing over between `servers` by itself), made in the
    background and retried until it answers; the same calls as MqttClient's the Publisher uses."""

    def __init__(self, servers: str, prefix: str, name: str, *, replicas: int = 3,
                 ca_file: str | None = None) -> None:
        self.servers = nats_servers(servers)
        self.ca_file = ca_file
        self.topics = Topics(prefix)
        self.name = name
        self.replicas = replicas
        self.connected = asyncio.Event()
        self._nc: Any = None
        self._js: Any = None
        self._runner: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        if self._closed:
            raise ConnectionError(f"NATS publisher {self.name} is closed")
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._connect(), name=f"nats {self.name}")

    def close(self) -> None:
        """Stop connecting (synchronous); `aclose()` also closes the connection."""
        self._closed = True
        if self._runner is not None:
            self._runner.cancel()

    async def aclose(self) -> None:
        self.close()
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)
        if self._nc is not None:
            await asyncio.gather(self._nc.close(), return_exceptions=True)
        self.connected.clear()

    async def wait_connected(self, timeout: float | None = None) -> None:
        self.start()
        async with asyncio.timeout(timeout):
            await self.connected.wait()

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                      timeout: float = 10.0) -> None:
        """Return once the cluster has it: state on the stream's acknowledgement, the rest on a flush.
        TimeoutError otherwise (not connected in time, no acknowledgement, refused: too large, ...).
        `qos` is MQTT's: every publish here is confirmed; `retain` is the topic's (Topics.retained)."""
        self.start()
        subject = subject_of(topic)
        try:
            async with asyncio.timeout(timeout):
                await self.connected.wait()
                if retain and is_stored_state(self.topics, topic):
                    await self._js.publish(subject, payload, stream=STATE_STREAM, timeout=timeout)
                else:
                    await self._nc.publish(subject, payload)
                    await self._nc.flush(timeout=max(1, int(timeout)))
        except NatsError as error:
            raise TimeoutError(f"{topic} not confirmed by the cluster: {error!r}") from error

    async def _connect(self) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                self._nc = await connect_cluster(self.servers, self.name, ca_file=self.ca_file,
                                                 disconnected_cb=self._disconnected,
                                                 reconnected_cb=self._reconnected)
                self._js = self._nc.jetstream(timeout=10.0)
                await ensure_stream(self._js, state_stream_config(self.topics, self.replicas))
                self.connected.set()
                log.info("publisher %s: publishing to the gates on %s", self.name,
                         for_log(",".join(self.servers)))
                return
            except (NatsError, OSError) as error:
                log.warning("publisher %s: cluster not reachable (%s); retrying in %.1f s", self.name, error,
                            delay)
                if self._nc is not None:
                    await asyncio.gather(self._nc.close(), return_exceptions=True)
                    self._nc = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def _disconnected(self) -> None:
        self.connected.clear()

    async def _reconnected(self) -> None:
        self.connected.set()
