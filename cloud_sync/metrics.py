"""Prometheus metrics of one hub (its own registry: several hubs can share a process).

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms) and are
what ``docs/grafana/hub.json`` charts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["HubMetrics"]

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _Gauges(Collector):
    """Values read at scrape time (log size, devices)."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, value in self._read().items():
            yield GaugeMetricFamily(f"factoryops_hub_{name}", name.replace("_", " "), value=value)


@dataclass
class HubMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r, p = self.registry, "factoryops_hub_"
        self.proofs = Counter(
            p + "proofs", "Micro-proofs by outcome (accepted, duplicate, refused) and reason",
            ["outcome", "reason"], registry=r,
        )  # fmt: skip
        self.readings = Counter(p + "readings_accepted", "Readings in accepted proofs", registry=r)
        self.ingest_seconds = Histogram(
            p + "ingest_seconds", "Time to verify, log and store one proof", buckets=_LATENCY,
            registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            p + "request_seconds", "HTTP request latency by route", ["method", "route", "status"],
            buckets=_LATENCY, registry=r,
        )  # fmt: skip

        self.shed = Counter(
            p + "requests_shed", "Requests answered 503 overloaded: the body budget was full",
            registry=r,
        )  # fmt: skip
        self.group_requests = Histogram(
            p + "commit_group_requests", "Upload requests stored by one group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=r,
        )  # fmt: skip

        # labelled children, each looked up once: ``labels()`` validates and locks every call
        # (~1 µs; an upload took three of them)
        self._latencies: dict[tuple[str, str, int], Histogram] = {}
        self._outcomes: dict[tuple[str, str], Counter] = {}

    def request_latency(self, method: str, route: str, status: int) -> Histogram:
        """``request_seconds`` for one (method, route template, status)."""
        key = (method, route, status)
        if (child := self._latencies.get(key)) is None:
            child = self._latencies[key] = self.request_seconds.labels(method, route, str(status))
        return child

    def proof_outcome(self, outcome: str, reason: str = "") -> Counter:
        """``proofs`` for one (outcome, reason)."""
        if (child := self._outcomes.get((outcome, reason))) is None:
            child = self._outcomes[outcome, reason] = self.proofs.labels(outcome, reason)
        return child

    def watch(self, read: Callable[[], dict[str, float]]) -> None:
        self.registry.register(_Gauges(read))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
