"""Broker accounts: the backend's and one per gate (the username is the gate id, as the ACL expects).

A credentials file holds `username password` lines (`#` comments), the very lines
`python -m backend.deploy.mosquitto_config` prints, so one list provisions Mosquitto and the embedded
broker alike. Without a file, `faregate demo` generates fresh passwords for every run.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from protocol.mqtt import parse_gate_id

from .private import write_private

BACKEND_USER = "faregate-backend"


def new_password() -> str:
    return secrets.token_urlsafe(18)


@dataclass(frozen=True)
class BrokerAccounts:
    backend_user: str
    passwords: Mapping[str, str] = field(default_factory=dict)  # username -> password, backend included

    @classmethod
    def generate(
        cls, gates: Iterable[str], backend_user: str = BACKEND_USER, backend_password: str | None = None
    ) -> BrokerAccounts:
        passwords = {backend_user: backend_password or new_password()}
        for gate in gates:
            parse_gate_id(gate)  # a gate account's name must be a gate id: the ACL's patterns use it
            passwords[gate] = new_password()
        return cls(backend_user, passwords)

    @classmethod
    def read(
        cls, path: Path, backend_user: str = BACKEND_USER, backend_password: str | None = None
    ) -> BrokerAccounts:
        """Read a credentials file; the backend's password comes from it, else from the argument,
        else it is generated (the backend is started with it, so no one else needs to know it)."""
        passwords: dict[str, str] = {}
        for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{path}:{number}: expected `username password`")
            user, password = parts
            if user != backend_user:
                parse_gate_id(user)
            passwords[user] = password
        passwords.setdefault(backend_user, backend_password or new_password())
        return cls(backend_user, passwords)

    def write(self, path: Path) -> None:
        """Write the credentials file, readable by its owner only."""
        lines = [f"{user} {password}\n" for user, password in self.passwords.items()]
        write_private(path, "# faregate broker accounts: username password\n" + "".join(lines))

    @property
    def backend_password(self) -> str:
        return self.passwords[self.backend_user]

    @property
    def gates(self) -> list[str]:
        return [user for user in self.passwords if user != self.backend_user]

    def with_gates(self, gates: Iterable[str]) -> BrokerAccounts:
        """These accounts plus a fresh one for each gate that has none yet."""
        extra = BrokerAccounts.generate([g for g in gates if g not in self.passwords], self.backend_user)
        return BrokerAccounts(self.backend_user, {**extra.passwords, **self.passwords})
