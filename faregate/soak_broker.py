"""The soak's broker in a process of its own: `python -m faregate.soak_broker PORT ACCOUNTS PREFIX`.

The embedded amqtt broker (backend/broker.py, the same accounts and ACL as the shipped Mosquitto),
run apart so that the soak can restart it as a broker crashes: SIGKILL, then a fresh start on the same
port with nothing kept. In the soak's own event loop amqtt's shutdown could wait for ever on a client
that was mid-delivery, and a port it still held could not be bound again.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from backend.broker import embedded_broker
from backend.deploy.accounts import BrokerAccounts


async def serve(port: int, accounts: BrokerAccounts, prefix: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with embedded_broker(port, accounts, prefix):
        print(f"broker listening on 127.0.0.1:{port}", flush=True)
        await stop.wait()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m faregate.soak_broker",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("accounts", type=Path, help="`username password` lines, the backend's first")
    parser.add_argument("prefix")
    parser.add_argument("--backend-user", default="faregate-backend")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.ERROR)
    logging.getLogger("amqtt").setLevel(logging.CRITICAL)  # its races when a client goes mid-delivery
    asyncio.run(serve(args.port, BrokerAccounts.read(args.accounts, args.backend_user), args.prefix))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
