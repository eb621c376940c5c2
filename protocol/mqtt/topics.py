"""Where each MQTT message goes: gate ids, tap ids and every topic under one configurable prefix.

docs/mqtt.md says who publishes on each topic, with which QoS and whether it is retained.
"""

from __future__ import annotations

import re

_GATE_ID = re.compile(r"(\d{1,5})-(\d{1,3})")


def gate_id(station_id: int, gate_no: int) -> str:
    """The gate's id on the wire and in topics: decimal station id, dash, decimal gate number."""
    return f"{station_id}-{gate_no}"


def parse_gate_id(value: str) -> tuple[int, int]:
    """Inverse of gate_id(); raises ValueError on anything else."""
    match = _GATE_ID.fullmatch(value)
    if not match or int(match[1]) > 0xFFFF or int(match[2]) > 0xFF:
        raise ValueError(f"not a gate id: {value!r}")
    return int(match[1]), int(match[2])


def tap_id(station_id: int, gate_no: int, seq: int) -> str:
    """`{gate_id}:{seq}`: one id per tap forever (seq is persisted and monotonic per gate)."""
    return f"{gate_id(station_id, gate_no)}:{seq}"


class Topics:
    """Every topic under one configurable prefix (no leading or trailing slash, e.g. "faregate")."""

    def __init__(self, prefix: str) -> None:
        if not prefix or prefix.startswith("/") or prefix.endswith("/") or any(c in prefix for c in "#+$"):
            raise ValueError(f"bad MQTT topic prefix: {prefix!r}")
        self.prefix = prefix

    def gate(self, gate: str, leaf: str) -> str:
        return f"{self.prefix}/gates/{gate}/{leaf}"

    def taps(self, gate: str) -> str:  # gate -> backend, QoS 1, not retained
        return self.gate(gate, "taps")

    def status(self, gate: str) -> str:  # gate -> all, QoS 1, retained, last will "offline"
        return self.gate(gate, "status")

    def request(self, gate: str) -> str:  # gate -> backend, QoS 1, not retained
        return self.gate(gate, "request")

    def committed(self, gate: str) -> str:  # backend -> gate, QoS 1, retained
        return self.gate(gate, "committed")

    def resend(self, gate: str) -> str:  # backend -> gate, QoS 1, not retained
        return self.gate(gate, "resend")

    def command(self, gate: str) -> str:  # backend -> gate, QoS 1, retained
        return self.gate(gate, "command")

    @property
    def all_taps(self) -> str:
        return f"{self.prefix}/gates/+/taps"

    @property
    def all_status(self) -> str:
        return f"{self.prefix}/gates/+/status"

    @property
    def all_requests(self) -> str:
        return f"{self.prefix}/gates/+/request"

    @property
    def denylist_delta(self) -> str:  # backend -> gates, QoS 1, not retained
        return f"{self.prefix}/denylist/delta"

    @property
    def denylist_snapshot(self) -> str:  # backend -> gates, QoS 1, retained
        return f"{self.prefix}/denylist/snapshot"

    @property
    def denylist_snapshot_ref(self) -> str:  # backend -> gates, QoS 1, retained (past MQTT's size)
        return f"{self.prefix}/denylist/snapshot-ref"

    @property
    def fare_table(self) -> str:  # backend -> gates, QoS 1, retained
        return f"{self.prefix}/faretable/current"

    @property
    def actions(self) -> str:  # backend -> gates, QoS 1, retained
        return f"{self.prefix}/actions"

    def retained(self, topic: str) -> bool:
        """Whether the backend publishes on this topic retained (the state a gate connecting needs; the
        comments above): its acks and commands, the deny-list snapshot and its reference, the fare
        table, the action list. Relays and bridges hand them on the same way."""
        if topic in (self.denylist_snapshot, self.denylist_snapshot_ref, self.fare_table, self.actions):
            return True
        return topic.startswith(f"{self.prefix}/gates/") and topic.rsplit("/", 1)[-1] in ("committed",
                                                                                           "command")

    @staticmethod
    def gate_of(topic: str) -> str:
        """The gate id inside a per-gate topic ("<prefix>/gates/<gate>/<leaf>")."""
        parts = topic.split("/")
        if len(parts) < 4 or parts[-3] != "gates":
            raise ValueError(f"not a per-gate topic: {topic!r}")
        return parts[-2]
