"""The gate's metrics, in Prometheus text format, plus the recent latencies its heartbeat reports.

prometheus_client does the exposition (a well-kept library beats a hand-written text format); each
gate has its own registry so several gates in one process (the demo) never mix their counters.
Histograms give buckets, not exact percentiles, so the heartbeat's p50/p99 come from a bounded window
of the latest taps instead.
"""

from __future__ import annotations

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

    @property
    def taps(self) -> _Labelled:
        return _Labelled(self._taps, self.gate_id)

    @property
    def alarms(self) -> _Labelled:
        return _Labelled(self._alarms, self.gate_id)

    def observe_open(self, seconds: float) -> None:
        self.tap_to_open_seconds.observe(seconds)
        self.recent_open_ms.append(seconds * 1000)

    def percentiles(self) -> dict[str, float]:
        """p50 / p99 / max tap-to-open of the recent taps, in ms (empty before the first tap)."""
        values = sorted(self.recent_open_ms)
        if not values:
            return {}
        pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
        return {"p50_ms": round(pick(0.5), 3), "p99_ms": round(pick(0.99), 3), "max_ms": round(values[-1], 3)}

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Labelled:
    """`metrics.taps.labels(outcome=...)` with the gate label filled in."""

    def __init__(self, counter: Counter, gate_id: str) -> None:
        self._counter = counter
        self._gate = gate_id

    def labels(self, **labels: str) -> Counter:
        return self._counter.labels(gate=self._gate, **labels)
