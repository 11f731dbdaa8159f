"""Prometheus metrics served over HTTP, read from live state at scrape time.

Collectors read the objects the event loop updates (plain ints and lists), so
nothing is counted twice; the HTTP server runs in prometheus_client's thread.
"""

from __future__ import annotations

import errno
import socket
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


def listen_problem(addr: str) -> str | None:
    """Why nothing could listen on ``addr`` here (None: something can): not an
    address, or not one of this machine's (EADDRNOTAVAIL). Found as the server
    would find it, by binding port 0 of it: that takes no port from anyone."""
    bind = _bare(addr)
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            bind, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind(where)
    except UnicodeError:
        return "not an address"
    except socket.gaierror as e:
        return f"not an address ({e.strerror or e})"
    except OSError as e:
        if e.errno == errno.EADDRNOTAVAIL:
            return "not an address of this machine"
        return f"cannot listen: {e.strerror or e}"
    return None


def check_listen_addr(addr: str, flag: str = "--metrics-addr") -> None:
    """UsageError (one line) unless the metrics could listen on ``addr``: checked
    whether or not a port is given, so a mistyped address never passes unseen."""
    problem = listen_problem(addr)
    if problem is not None:
        raise UsageError(f"{flag} {addr}: {problem}")


def _bare(addr: str) -> str:
    # "[::]" as in a URL or --listen; the HTTP server takes the bare address.
    return addr[1:-1] if addr.startswith("[") and addr.endswith("]") else addr


def serve(
    fn: Callable[[], Iterable[Metric]], port: int, addr: str = "127.0.0.1"
) -> tuple[object, int]:
    """Serve /metrics on ``addr:port``; returns (server, bound port). UsageError (one
    line) if the address cannot be bound."""
    registry = CollectorRegistry()
    registry.register(FnCollector(fn))
    try:
        server, _thread = start_http_server(port, addr=_bare(addr), registry=registry)
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
