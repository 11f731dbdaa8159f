"""Prometheus metrics served over HTTP, read from live state at scrape time.

Collectors read the objects the event loop updates (plain ints and lists), so
nothing is counted twice; the HTTP server runs in prometheus_client's thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from pagehint.errors import UsageError
from pagehint.stats import LatencyHistogram


class FnCollector(Collector):
    """Builds metric families from a function each scrape."""

    def __init__(self, fn: Callable[[], Iterable[Metric]]) -> None:
        self.fn = fn

    def collect(self) -> Iterable[Metric]:
        for _ in range(3):  # the event loop may change a dict mid-scrape: retry
            try:
                return list(self.fn())
            except RuntimeError:
                continue
        return []


def serve(
    fn: Callable[[], Iterable[Metric]], port: int, addr: str = "127.0.0.1"
) -> tuple[object, int]:
    """Serve /metrics on ``addr:port``; returns (server, bound port). UsageError (one
    line) if the address cannot be bound."""
    registry = CollectorRegistry()
    registry.register(FnCollector(fn))
    # "[::]" as in a URL or --listen; the HTTP server takes the bare address.
    bind = addr[1:-1] if addr.startswith("[") and addr.endswith("]") else addr
    try:
        server, _thread = start_http_server(port, addr=bind, registry=registry)
    except OSError as e:
        where = f"--metrics-addr {addr} --metrics-port {port}"
        raise UsageError(f"{where}: cannot listen: {e.strerror or e}") from None
    return server, int(server.server_port)


def counter(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    m = CounterMetricFamily(name, doc, labels=list(labels or {}))
    m.add_metric(list((labels or {}).values()), value)
    return m


def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    m = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    m.add_metric(list((labels or {}).values()), value)
    return m


def histogram(name: str, doc: str, h: LatencyHistogram) -> Metric:
    m = HistogramMetricFamily(name, doc)
    m.add_metric([], h.buckets(), h.sum)
    return m
