"""Start and stop the backend's parts together: database, broker client, ingest, processor, API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from typing import TYPE_CHECKING, Any

from .config import Settings
from .db import make_engine, make_sessionmaker
from .deploy.accounts import BrokerAccounts
from .distribution import Conflict, Distributor
from .migrate import upgrade
from .publisher import Publisher

if TYPE_CHECKING:
    from .ingest.stream import StreamSource

log = logging.getLogger("faregate.backend")


class PortInUse(OSError):
    """A port the backend must listen on is taken: said in one line before anything starts."""


def listen_socket(host: str, port: int, what: str) -> socket.socket:
    """Bind the port now, before anything claims to be running, and hand the socket to the server, so
    the check and the listening are one act (no window in which another process can take it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT leftover is not "taken"
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise PortInUse(
            error.errno, f"cannot listen for the {what} on {host}:{port}: {error.strerror} "
            f"(another faregate backend running? choose another port with --port)"
        ) from None
    sock.set_inheritable(True)
    return sock


def check_free(host: str, port: int, what: str) -> None:
    """Raise PortInUse now if `port` is taken (for a server that binds its own socket, the embedded
    broker: it binds a moment later, so the check narrows the failure to a clear message)."""
    listen_socket(host, port, what).close()


async def serve(
    settings: Settings,
    *,
    api: bool,
    ingest: bool,
    processor: bool = True,
    host: str = "127.0.0.1",
    port: int = 8000,
    embedded_broker_port: int | None = None,
    embedded_broker_accounts: BrokerAccounts | None = None,
    stop: asyncio.Event | None = None,
    install_signals: bool = True,
    ingest_stream: StreamSource | None = None,  # pull from a cluster's stream instead of subscribing
) -> None:
    stop = stop or asyncio.Event()
    if install_signals:  # a program embedding the backend (the demo) keeps its own handlers
        install_stop_signals(stop)
    async with contextlib.AsyncExitStack() as stack:
        api_socket = listen_socket(host, port, "API") if api else None
        if api_socket is not None:
            stack.callback(api_socket.close)
        if embedded_broker_port:
            check_free("127.0.0.1", embedded_broker_port, "embedded MQTT broker")
            from .broker import embedded_broker

            broker = embedded_broker(embedded_broker_port, embedded_broker_accounts, settings.mqtt_prefix)
            await stack.enter_async_context(broker)
        engine = make_engine(settings)
        stack.push_async_callback(engine.dispose)
        await upgrade(engine, settings)
        sessions = make_sessionmaker(engine)
        tasks: list[asyncio.Task[Any]] = []
        wake_processor = asyncio.Event()
        publisher = Publisher(settings)
        stack.push_async_callback(publisher.aclose)
        if settings.publish_nats_url:  # connected now: it makes FAREGATE_STATE, which relays only read
            publisher.start()
        distributor = Distributor(sessions, publisher)
        if ingest:
            from .control import SnapshotRequests, handle_control_messages
            from .ingest.worker import IngestWorker

            # gates' snapshot requests and the ingest's own (re)connections: coalesced republishes
            snapshots = SnapshotRequests(distributor.resend)
            stack.push_async_callback(snapshots.aclose)

            async def on_other(messages: list[Any]) -> None:
                await handle_control_messages(settings, sessions, messages, snapshots)

            worker = IngestWorker(
                settings,
                sessions,
                on_other=on_other,
                on_stored=lambda result: wake_processor.set(),
                on_connected=snapshots.republish_all,  # a broker restarted empty gets the state back
                stream=ingest_stream,
            )
            tasks.append(asyncio.create_task(worker.run(stop), name="ingest"))
        if processor:
            from .processor import Processor, run_processor

            async def block(cards: list[str], reason: str) -> None:
                with contextlib.suppress(Conflict):  # already listed
                    await distributor.change_denylist(cards, [], reason, status="blocked")

            async def actions_changed() -> None:
                await distributor.publish_actions()

            pending = Processor(settings, sessions, on_block=block, on_action_applied=actions_changed)
            loop = run_processor(settings, sessions, stop, wake_processor, pending)
            tasks.append(asyncio.create_task(loop, name="processor"))
        if api:
            import uvicorn

            from .api.main import create_app

            app = create_app(settings, engine=engine, publisher=publisher, migrate=False)
            server = uvicorn.Server(
                uvicorn.Config(
                    app, host=host, port=port, log_level="warning", lifespan="on",
                    proxy_headers=False,  # the app trusts X-Forwarded-For only from FAREGATE_TRUSTED_PROXIES
                )
            )

            assert api_socket is not None

            async def api_task(listening: socket.socket = api_socket) -> None:
                serve_task = asyncio.create_task(server.serve(sockets=[listening]))
                await stop.wait()
                server.should_exit = True
                await serve_task

            tasks.append(asyncio.create_task(api_task(), name="api"))
            log.info("API on http://%s:%d", host, port)
        log.info("backend running (ingest=%s processor=%s api=%s)", ingest, processor, api)
        if not tasks:
            return
        _done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on the main thread
            loop.add_signal_handler(sig, stop.set)
