"""The broker ACL, written once: Mosquitto gets it as an acl_file, the embedded amqtt evaluates it.

One list of rules, so the two brokers can never disagree on what a gate may touch: a gate (it logs
in as its gate id) publishes only its own taps, status and requests and reads only its own
committed/resend/command topics plus the shared deny-list, fare table and action list; the backend
account reads and writes everything under the prefix.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from protocol.mqtt import Topics

Access = Literal["read", "write", "readwrite"]
_SAMPLE = "p"  # Topics needs a concrete prefix; the rules swap in the real one (which may hold '+')


@dataclass(frozen=True)
class AclRule:
    """`user` None: a pattern line for every user, with %u standing for the username."""

    user: str | None
    access: Access
    topic: str


def _check_prefix(prefix: str) -> None:
    levels = prefix.split("/")
    if any(not level or ("+" in level and level != "+") or any(c in level for c in "#$") for level in levels):
        raise ValueError(f"bad MQTT topic prefix (or prefix filter): {prefix!r}")


def acl_rules(prefix: str, backend_user: str) -> list[AclRule]:
    """The rules for one network. `prefix` may have whole '+' levels: one broker for several
    networks (the test session's shared Mosquitto) with the same per-gate limits in each."""
    _check_prefix(prefix)
    t = Topics(_SAMPLE)

    def under(topic: str) -> str:
        return prefix + topic[len(_SAMPLE) :]

    rules = [AclRule(backend_user, "readwrite", f"{prefix}/#")]
    rules += [
        AclRule(None, "write", under(topic)) for topic in (t.taps("%u"), t.status("%u"), t.request("%u"))
    ]
    rules += [
        AclRule(None, "read", under(topic)) for topic in (t.committed("%u"), t.resend("%u"), t.command("%u"))
    ]
    rules += [
        AclRule(None, "read", under(topic)) for topic in (f"{_SAMPLE}/denylist/#", t.fare_table, t.actions)
    ]
    return rules


def acl_text(prefix: str, backend_user: str) -> str:
    """The rules as a Mosquitto acl_file."""
    rules = acl_rules(prefix, backend_user)
    lines = [
        "# written by backend.deploy.mosquitto_config; %u is the username (a gate logs in as its gate id)"
    ]
    for user in dict.fromkeys(r.user for r in rules if r.user is not None):
        lines += [f"user {user}", *(f"topic {r.access} {r.topic}" for r in rules if r.user == user), ""]
    lines.append("# every other user is a gate, limited to its own topics")
    lines += [f"pattern {r.access} {r.topic}" for r in rules if r.user is None]
    return "\n".join(lines) + "\n"


def _matches(topic: str, pattern: str) -> bool:
    """A concrete topic against a filter ('+' one level, '#' the rest)."""
    t, p = topic.split("/"), pattern.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(t) == len(p)


def _covers(subscription: str, pattern: str) -> bool:
    """Every topic the subscription filter can match is matched by the pattern."""
    s, p = subscription.split("/"), pattern.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(s) or s[i] == "#" or (level != "+" and (s[i] == "+" or level != s[i])):
            return False
    return len(s) == len(p)


def allowed(
    rules: Iterable[AclRule], user: str | None, topic: str, action: Literal["read", "write", "subscribe"]
) -> bool:
    """Mosquitto's reading of the rules: a user's own lines and every pattern line apply; no user
    (anonymous) and a username that could act as a wildcard in a pattern get nothing."""
    if not user or any(c in user for c in "+#/"):
        return False
    need = "read" if action == "subscribe" else action
    test = _covers if action == "subscribe" else _matches
    for rule in rules:
        if need not in rule.access or (rule.user is not None and rule.user != user):
            continue
        if test(topic, rule.topic.replace("%u", user) if rule.user is None else rule.topic):
            return True
    return False
