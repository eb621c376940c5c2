"""The embedded broker (amqtt) for a demo, one station, and tests: no Mosquitto to install.

amqtt speaks MQTT 3.1.1 only and has no shared subscriptions, so a backend on it uses
mqtt_version="3.1.1" and a plain subscription (ingest_group=""); see docs/mqtt.md.

It runs with the same accounts and the same ACL as the shipped Mosquitto configuration (both come from
backend.deploy): two small plugins of our own, since amqtt's file plugin needs a hashed password file on
disk and its ACL plugin has no per-user pattern (%u) lines. Anonymous clients are refused unless a
caller asks for an open broker (`allow_anonymous=True`: tests of MQTT behaviour, benchmarks).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action, BrokerConfig, ListenerConfig
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from .deploy.accounts import BrokerAccounts
from .deploy.acl import AclRule, acl_rules, allowed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _digest(password: str) -> str:
    # The passwords are random tokens generated for the run (or read from a file next to the clients'
    # copies), so a fast hash is enough; it only keeps them out of the broker's config and logs.
    return hashlib.sha256(password.encode()).hexdigest()


class AccountsAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt ships no type hints
    """Only the listed accounts may connect, each with its own password."""

    @dataclass
    class Config:
        users: dict[str, str] = field(default_factory=dict)  # username -> sha256 hex of the password

    async def authenticate(self, *, session: Session) -> bool:
        users: dict[str, str] = self.context.config.users
        expected = users.get(session.username or "") if session.username else None
        if expected is None:
            return False
        return hmac.compare_digest(_digest(session.password or ""), expected)


class AclPlugin(BaseTopicPlugin):  # type: ignore[misc]
    """The ACL of backend.deploy.acl on publish, subscribe and delivery. A refused publish is dropped
    (amqtt still acks it, as Mosquitto does for MQTT 3.1.1); a refused subscription gets 0x80."""

    @dataclass
    class Config:
        prefix: str = "faregate"
        backend_user: str = "faregate-backend"

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        config = self.context.config
        self.rules: list[AclRule] = acl_rules(config.prefix, config.backend_user)

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        if session is None or not topic:
            return False
        user = session.username
        if action == Action.PUBLISH:
            return allowed(self.rules, user, topic, "write")
        if action == Action.SUBSCRIBE:
            return allowed(self.rules, user, topic, "subscribe")
        return allowed(self.rules, user, topic, "read")


def embedded_config(
    port: int,
    accounts: BrokerAccounts | None = None,
    prefix: str = "faregate",
    *,
    allow_anonymous: bool = False,
) -> BrokerConfig:
    listeners = {"default": ListenerConfig(type="tcp", bind=f"127.0.0.1:{port}")}
    if accounts is None:
        if not allow_anonymous:
            raise ValueError("the embedded broker needs accounts (or allow_anonymous=True)")
        plugins: dict[str, Any] = {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
        }
        return BrokerConfig(listeners=listeners, plugins=plugins)
    users = {user: _digest(password) for user, password in accounts.passwords.items()}
    plugins = {
        f"{__name__}.AccountsAuthPlugin": {"users": users},
        f"{__name__}.AclPlugin": {"prefix": prefix, "backend_user": accounts.backend_user},
    }
    return BrokerConfig(listeners=listeners, plugins=plugins)


@contextlib.asynccontextmanager
async def embedded_broker(
    port: int | None = None,
    accounts: BrokerAccounts | None = None,
    prefix: str = "faregate",
    *,
    allow_anonymous: bool = False,
) -> AsyncIterator[str]:
    """Run amqtt on 127.0.0.1 (a free port unless given) for the block; yields its mqtt:// URL.

    With `accounts`, only they may connect, limited by the ACL for topic `prefix` (which may hold '+'
    levels); without, `allow_anonymous=True` must say that an open broker is meant."""
    port = port or free_port()
    broker = Broker(embedded_config(port, accounts, prefix, allow_anonymous=allow_anonymous))
    await broker.start()
    try:
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        await broker.shutdown()
        await asyncio.sleep(0)
