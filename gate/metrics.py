"""The gate's metrics, in Prometheus text format, plus the recent latencies its heartbeat reports.

prometheus_client does the exposition (a well-kept library beats a hand-written text format); each
gate has its own registry so several gates in one process (the demo) never mix their counters.
Histograms give buckets, not exact percentiles, so the heartbeat's p50/p99 come from a bounded window
of the latest taps instead.
"""

from __future__ import annotations

import functools
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class GateMetrics:
    def __init__(self, gate_id: str, backlog: Callable[[], float] | None = None) -> None:
        self.registry = CollectorRegistry()
        labels = {"gate": gate_id}
        self.decision_seconds = Histogram(
            "faregate_decision_seconds", "phone in field to fare decision", registry=self.registry,
            labelnames=["gate"], buckets=_LATENCY_BUCKETS).labels(**labels)
        self.tap_to_open_seconds = Histogram(
            "faregate_tap_to_open_seconds", "phone in field to barrier open command acknowledged",
            registry=self.registry, labelnames=["gate"], buckets=_LATENCY_BUCKETS).labels(**labels)
        self._taps = Counter("faregate_taps", "taps by outcome", ["gate", "outcome"], registry=self.registry)
        self.passages = Counter("faregate_passages", "people through the passage sensor",
                                registry=self.registry, labelnames=["gate"]).labels(**labels)
        self._alarms = Counter("faregate_alarms", "tailgating and forced-door alarms", ["gate", "kind"],
                               registry=self.registry)
        backlog_gauge = Gauge("faregate_journal_backlog", "taps not yet committed by the backend",
                              ["gate"], registry=self.registry).labels(**labels)
        if backlog is not None:
            backlog_gauge.set_function(backlog)
        self.gate_id = gate_id
        self.recent_open_ms: deque[float] = deque(maxlen=1000)
        self.recent_host_ms: deque[float] = deque(maxlen=1000)
        self.alarm_counts: Tally[str] = Tally()
        recent = Gauge("faregate_recent_ms", "tap-to-open and the gate's own processing time over the "
                       "latest 1000 taps", ["gate", "what", "quantile"], registry=self.registry)
        for what, window in (("tap_to_open", self.recent_open_ms), ("host", self.recent_host_ms)):
            for q in (0.5, 0.99):
                recent.labels(gate=gate_id, what=what, quantile=str(q)).set_function(
                    functools.partial(_quantile, window, q))

    @property
    def taps(self) -> _Labelled:
        return _Labelled(self._taps, self.gate_id)

    def alarm(self, kind: str) -> None:
        """A tailgating or forced-door alarm from the passage sensor."""
        self._alarms.labels(gate=self.gate_id, kind=kind).inc()
        self.alarm_counts[kind] += 1

    def observe_open(self, seconds: float, host_seconds: float) -> None:
        """A barrier opened `seconds` after the phone was seen, `host_seconds` of it the gate's own
        work (frame read to next request sent); the rest is the wire and the device."""
        self.tap_to_open_seconds.observe(seconds)
        self.recent_open_ms.append(seconds * 1000)
        self.recent_host_ms.append(host_seconds * 1000)

    def status_fields(self) -> dict[str, float | int]:
        """What the gate's status heartbeat reports: recent latency percentiles and alarm counts."""
        fields: dict[str, float | int] = {
            kind + "_alarms": self.alarm_counts[kind] for kind in ("tailgating", "forced_door")}
        if self.recent_open_ms:
            fields["tap_to_open_p50_ms"] = round(_quantile(self.recent_open_ms, 0.5), 3)
            fields["tap_to_open_p99_ms"] = round(_quantile(self.recent_open_ms, 0.99), 3)
            fields["host_p99_ms"] = round(_quantile(self.recent_host_ms, 0.99), 3)
        return fields

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Labelled:
    """`metrics.taps.labels(outcome=...)` with the gate label filled in."""

    def __init__(self, counter: Counter, gate_id: str) -> None:
        self._counter = counter
        self._gate = gate_id

    def labels(self, **labels: str) -> Counter:
        return self._counter.labels(gate=self._gate, **labels)


def _quantile(values: deque[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
