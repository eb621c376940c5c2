"""Who may do what on the NATS cluster: the accounts a city's nodes are started with.

The broker and the station network are hostile ground (docs/security.md), so a node takes no client
without a password, and no node joins the cluster without the routes' password:

- `faregate-admin`: the operator's maintenance account, everything allowed; no process runs on it.
- `faregate-backend`: the ingest workers and the operator's backend: every subject, making the streams
  and the ingest's consumer, but never deleting, purging or reconfiguring a stream, deleting a
  message or a consumer (`BACKEND_DENIED`): a compromised worker or API host cannot wipe what the
  cluster holds (taps not yet stored, the state every station fetches).
- one account a station relay (or a relay process serving several stations): it may publish only its
  own gates' uplink subjects (taps, status, requests), read the two streams' descriptions and the
  state stream's last messages, and subscribe only its own gates' downlink subjects, the shared state
  subjects and its own reply inbox (`_INBOX_<user>`, the relay's nats-py `inbox_prefix`). So a
  relay's password lets its holder publish as its own gates only (whose taps still carry each gate's
  MAC), never on a downlink subject (no forged ack, block or command reaches a gate through it), never
  read another station's acks nor the backend's replies, never delete, purge or reconfigure a stream.

NATS wildcards match whole tokens, and a gate id ("31-2") is one token, so a relay's subjects are
listed gate by gate: the station's gate list, which its server's accounts are written from as well.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

from backend.ingest.stream import STREAM, subject_of, user_inbox
from backend.state_stream import STATE_STREAM, state_topics
from protocol.mqtt import Topics

BACKEND_USER = "faregate-backend"
ADMIN_USER = "faregate-admin"
ROUTE_USER = "faregate-route"
# the JetStream API requests the backend's account may not make (NATS permissions: publish deny)
# (elections forced at will, a peer removed, a server removed from the meta group: denial of service)
BACKEND_DENIED = ["$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.UPDATE.>",
                  "$JS.API.STREAM.MSG.DELETE.>", "$JS.API.CONSUMER.DELETE.>", "$JS.API.STREAM.PEER.REMOVE.>",
                  "$JS.API.STREAM.LEADER.STEPDOWN.>", "$JS.API.CONSUMER.LEADER.STEPDOWN.>",
                  "$JS.API.META.LEADER.STEPDOWN", "$JS.API.SERVER.REMOVE"]


@dataclass
class RelayAccount:
    user: str
    password: str
    gates: list[str]

    def permissions(self, topics: Topics) -> dict[str, object]:
        uplink = [subject_of(kind(topics, gate)) for gate in self.gates
                  for kind in (Topics.taps, Topics.status, Topics.request)]
        downlink = [subject_of(kind(topics, gate)) for gate in self.gates
                    for kind in (Topics.committed, Topics.resend, Topics.command)]
        shared = [subject_of(topic) for topic in [topics.denylist_delta, *state_topics(topics)]]
        api = [f"$JS.API.STREAM.INFO.{STREAM}", f"$JS.API.STREAM.INFO.{STATE_STREAM}",
               f"$JS.API.STREAM.MSG.GET.{STATE_STREAM}"]
        return {"publish": {"allow": uplink + api},
                "subscribe": {"allow": downlink + shared + [f"{user_inbox(self.user)}.>"]}}


@dataclass
class ClusterAccounts:
    """The backend's, the routes' and each relay's password (generated), for one topic prefix."""

    prefix: str
    backend_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    route_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    relays: dict[str, RelayAccount] = field(default_factory=dict)

    def add_relay(self, user: str, gates: list[str]) -> RelayAccount:
        if user in (BACKEND_USER, ADMIN_USER, ROUTE_USER) or user in self.relays:
            raise ValueError(f"account {user!r} exists")
        account = RelayAccount(user, secrets.token_urlsafe(18), sorted(gates))
        self.relays[user] = account
        return account

    def authorization(self) -> str:
        """The nats-server `authorization` block (JSON is valid nats-server configuration)."""
        topics = Topics(self.prefix)
        users: list[dict[str, object]] = [
            {"user": ADMIN_USER, "password": self.admin_password},
            {"user": BACKEND_USER, "password": self.backend_password,
             "permissions": {"publish": {"deny": BACKEND_DENIED}}},
        ]
        users += [{"user": r.user, "password": r.password, "permissions": r.permissions(topics)}
                  for r in self.relays.values()]
        return "authorization " + json.dumps({"users": users}, indent=1)

    def route_authorization(self) -> str:
        return "authorization " + json.dumps({"user": ROUTE_USER, "password": self.route_password})

    def route_url(self, port: int) -> str:
        return f"nats-route://{ROUTE_USER}:{self.route_password}@127.0.0.1:{port}"
