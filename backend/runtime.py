"""Start and stop the backend's parts together: database, broker client, ingest, processor, API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from .config import Settings
from .db import make_engine, make_sessionmaker
from .deploy.accounts import BrokerAccounts
from .distribution import Conflict, Distributor
from .migrate import upgrade
from .publisher import Publisher

log = logging.getLogger("faregate.backend")


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
) -> None:
    stop = stop or asyncio.Event()
    if install_signals:  # a program embedding the backend (the demo) keeps its own handlers
        install_stop_signals(stop)
    async with contextlib.AsyncExitStack() as stack:
        if embedded_broker_port:
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
        distributor = Distributor(sessions, publisher)
        if ingest:
            from .control import SnapshotRequests, handle_control_message
            from .ingest.worker import IngestWorker

            # gates' snapshot requests and the ingest's own (re)connections: coalesced republishes
            snapshots = SnapshotRequests(distributor.resend)
            stack.push_async_callback(snapshots.aclose)

            async def on_other(message: Any) -> None:
                await handle_control_message(settings, sessions, message, snapshots)

            worker = IngestWorker(
                settings,
                sessions,
                on_other=on_other,
                on_stored=lambda result: wake_processor.set(),
                on_connected=snapshots.republish_all,  # a broker restarted empty gets the state back
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

            async def api_task() -> None:
                serve_task = asyncio.create_task(server.serve())
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
