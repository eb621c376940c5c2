"""One gate, wired: serial link, journal, local state, controller, MQTT uplink, metrics endpoint.

`faregate gate` runs one GateRuntime per process; the demo and the loop benchmark run several in one
event loop with the same class, so what they measure is what a gate runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable

import fare_core

from .config import GateConfig
from .controller import GateController
from .journal import Journal
from .metrics import GateMetrics
from .serial_link import ReaderLink
from .state import LocalState
from .uplink import DenyListFetcher, Uplink

log = logging.getLogger(__name__)

LINK_SETUP_RETRY_MIN_S, LINK_SETUP_RETRY_MAX_S = 0.5, 10.0  # a failed reader setup tried again


class GateRuntime:
    """`clock` is the gate's wall clock (UTC seconds) for everything it stamps, taps and status alike:
    the soak runs gates whose clock jumped through it."""

    def __init__(self, config: GateConfig, serial_url: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        url = serial_url or config.serial
        if not url:
            raise ValueError("no serial port: give --serial or `serial` in the gate configuration")
        self.config = config
        self.journal = Journal(config.data_dir / "journal.db")
        self.state = LocalState(config.data_dir, self.journal)
        self.metrics = GateMetrics(config.gate_id, backlog=lambda: float(self.journal.pending_count()))
        self.link = ReaderLink(url, config.baud, on_state=self._link_state)
        self.controller = GateController(
            station_id=config.station_id, gate_no=config.gate_no, direction=config.fare_direction,
            link=self.link, journal=self.journal, state=self.state, sam=fare_core.Sam(config.sam_key),
            metrics=self.metrics, rssi_min_dbm=config.rssi_min_dbm, hold_ms=config.hold_ms, clock=clock)
        self.controller.tap_key = config.uplink_key  # every tap is journaled with its MAC
        self.uplink: Uplink | None = None
        if config.mqtt.url:
            host, port = config.mqtt.host_port
            fetcher = None
            if config.backend.url:
                verify: ssl.SSLContext | bool = True
                if config.backend.ca_file is not None:
                    verify = ssl.create_default_context(cafile=str(config.backend.ca_file))
                fetcher = DenyListFetcher(
                    gate_id=config.gate_id, url=config.backend.url, state=self.state,
                    mac_key=config.uplink_key, clock=clock, jitter_s=config.backend.fetch_jitter_s,
                    retry_s=config.backend.fetch_retry_s, retry_max_s=config.backend.fetch_retry_max_s,
                    timeout_s=config.backend.fetch_timeout_s, verify=verify)
            self.uplink = Uplink(
                gate_id=config.gate_id, host=host, port=port, prefix=config.mqtt.prefix,
                journal=self.journal, state=self.state, final_seq=lambda: self.controller.final_seq,
                window=config.mqtt.window, batch_max=config.mqtt.batch_max,
                heartbeat_s=config.mqtt.heartbeat_s, stall_s=config.mqtt.stall_s,
                stall_max_s=config.mqtt.stall_max_s,
                on_mode=self.controller.apply_mode,
                extra_status=self.metrics.status_fields, username=config.mqtt.username,
                password=config.mqtt.password, tls_context=config.mqtt.ssl_context(),
                mac_key=config.uplink_key, backend_keys=config.backend_public_keys, clock=clock,
                fetcher=fetcher)
            self.controller.on_final = self.uplink.tap_journaled
            self.controller.on_alarm = self._alarm
        self._metrics_server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._link_setup: asyncio.Task[None] | None = None

    def _alarm(self, _alarm: object) -> None:
        """Tell the backend at once (the status carries the alarm counts), not at the next heartbeat."""
        if self.uplink is not None:
            task = asyncio.get_running_loop().create_task(self.uplink.publish_status_soon())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _link_state(self, up: bool) -> None:
        if self._link_setup is not None:  # a setup of the port as it was: this one starts afresh
            self._link_setup.cancel()
            self._link_setup = None
        if up:  # learn the field and restore the barrier for the mode, off the reader's callback
            task = asyncio.get_running_loop().create_task(self._after_link_up())
            self._link_setup = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _after_link_up(self) -> None:
        """Set the reader up, again and again with back-off while the port stays up and setup fails: a
        reader still booting (or a controller starved of CPU) may leave every OpenSession unanswered,
        and the port, being up, is not reopened, so nothing else would try again before a phone came."""
        delay = LINK_SETUP_RETRY_MIN_S
        while True:
            try:
                await self.controller.link_up()
                return
            except Exception as exc:
                log.warning("gate %s: link setup failed: %s; trying again in %.1f s", self.config.gate_id,
                            exc, delay)
            await asyncio.sleep(delay)
            if not self.link.is_up:  # down meanwhile: its reopen sets it up afresh
                return
            delay = min(delay * 2, LINK_SETUP_RETRY_MAX_S)

    async def start(self) -> None:
        await self.controller.start()
        await self.link.open()
        if self.uplink is not None:
            await self.uplink.start()
        if self.config.metrics_port:
            self._metrics_server = await asyncio.start_server(self._serve_metrics, "127.0.0.1",
                                                              self.config.metrics_port)

    async def stop(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.close()
            await self._metrics_server.wait_closed()
        if self.uplink is not None:
            await self.uplink.stop()
        await self.controller.stop()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.link.close()
        self.journal.close()

    async def _serve_metrics(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """GET /metrics in Prometheus text format; a few lines beat a web framework on a gate."""
        try:
            async with asyncio.timeout(5):
                request = await reader.readline()
            ok = request.split(b" ")[1:2] == [b"/metrics"]
            body = self.metrics.exposition() if ok else b"not found\n"
            status = b"200 OK" if ok else b"404 Not Found"
            head = (b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n")
            writer.write(head + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
