"""Passwords (scrypt), bearer tokens (random, stored as SHA-256), a login rate limiter, and the client
address behind trusted proxies."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..tables import LoginAttemptRow


class Role(StrEnum):
    VIEWER = "viewer"  # reads everything
    OPERATOR = "operator"  # + blocks phones, commands gates, creates actions, publishes fares
    ADMIN = "admin"  # + manages operator accounts

    @property
    def rank(self) -> int:
        return {"viewer": 0, "operator": 1, "admin": 2}[self.value]


_N, _R, _P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        got = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=len(digest) // 2
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)


def new_token() -> tuple[str, str]:
    """A bearer token and the hash stored in the database (a leaked table reveals no token)."""
    token = secrets.token_urlsafe(32)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class LoginLimiter:
    """At most `limit` attempts per key in any `window_s`, counted in the database (shared by every
    API process). Each attempt is recorded in its own transaction, before the password is checked,
    so a failed login counts too; rows older than the window are deleted as it goes."""

    def __init__(self, limit: int, window_s: float = 60.0) -> None:
        self.limit = limit
        self.window_s = window_s

    async def allow(self, sessions: async_sessionmaker[AsyncSession], key: str) -> bool:
        now = datetime.now(UTC)
        since = now - timedelta(seconds=self.window_s)
        key = key[:200]
        async with sessions.begin() as session:
            await session.execute(delete(LoginAttemptRow).where(LoginAttemptRow.at < since))
            recent = await session.scalar(
                select(func.count()).where(LoginAttemptRow.key == key, LoginAttemptRow.at >= since)
            )
            if (recent or 0) >= self.limit:
                return False
            session.add(LoginAttemptRow(key=key, at=now))
        return True


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """Which direct peers may tell us the client's address in X-Forwarded-For.

    Anyone can send that header, so it is believed only from a configured proxy (none by default),
    and then read from the right: each trusted proxy appends the address it saw, so the rightmost
    entry that is not itself a trusted proxy is the real client; entries further left are whatever
    the client wrote and are ignored."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: list[IpNetwork] = [ipaddress.ip_network(n.strip(), strict=False) for n in networks]

    def trusts(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def client(self, peer: str, forwarded_for: Iterable[str]) -> str:
        """The client's address: the direct peer, or behind trusted proxies the first untrusted hop."""
        if not self.networks or not self.trusts(peer):
            return peer
        hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
        for hop in reversed(hops):
            if hop and not self.trusts(hop):
                return hop[:100]
        return peer
