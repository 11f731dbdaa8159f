"""The host's Prometheus metrics (pagehint_host_*), read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from host.device import BalloonDevice
from pagehint.metrics import counter, gauge, histogram
from virtqueue.contract import PAGE_SIZE


def host_metrics(device: BalloonDevice) -> Iterator[Metric]:
    sessions = list(device.sessions.values())
    resident = GaugeMetricFamily(
        "pagehint_host_resident_bytes", "Memory the host holds for each guest.", labels=["guest"]
    )
    reported = CounterMetricFamily(
        "pagehint_host_reported_bytes",
        "Bytes reported by each guest (acknowledged chains).",
        labels=["guest"],
    )
    chains = CounterMetricFamily(
        "pagehint_host_chains", "Chains used, per guest.", labels=["guest"]
    )
    for s in sessions:
        resident.add_metric([s.guest_id], s.ram.resident_pages() * PAGE_SIZE)
        reported.add_metric([s.guest_id], s.totals.reported_pages * PAGE_SIZE)
        chains.add_metric([s.guest_id], s.totals.chains)
    yield resident
    yield reported
    yield chains
    refused = CounterMetricFamily(
        "pagehint_host_refused_chains", "Chains refused, by reason.", labels=["reason"]
    )
    for reason, n in sorted(device.refusals.items()):
        refused.add_metric([reason], n)
    yield refused
    yield gauge(
        "pagehint_host_resident_total_bytes",
        "Memory held for all guests.",
        device.resident_pages() * PAGE_SIZE,
    )
    yield gauge("pagehint_host_guests", "Guests with a session.", len(sessions))
    yield counter("pagehint_host_chains_all", "Chains used, all guests.", device.chains)
    yield histogram(
        "pagehint_host_chain_seconds",
        "Time to check and discard one chain.",
        device.chain_histogram,
    )


def start_host_metrics(device: BalloonDevice, addr: str, port: int, log: object) -> object:
    from pagehint.metrics import serve

    server, bound = serve(lambda: host_metrics(device), port, addr)
    if callable(log):
        log(f"metrics on http://{addr}:{bound}/metrics")
    return server
