"""The guest's Prometheus metrics (pagehint_*), read from live state at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from pagehint.metrics import counter, gauge, histogram
from virtqueue.contract import PAGE_SIZE

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from guest.balloon import BalloonDriver
    from guest.runtime import GuestRuntime


def guest_metrics(rt: GuestRuntime, driver: BalloonDriver | None) -> Iterator[Metric]:
    st = rt.policy.stats
    g = {"guest": rt.cfg.guest_id, "policy": rt.cfg.hinting.policy}
    yield counter(
        "pagehint_reported_bytes",
        "Bytes reported to the host and acknowledged.",
        st.reported_bytes,
        g,
    )
    yield counter("pagehint_chains", "Reports (chains) acknowledged by the host.", st.reports, g)
    yield counter(
        "pagehint_report_failures",
        "Reports the host refused, failed to discard, or never got (fenced).",
        st.failures,
        g,
    )
    yield counter("pagehint_stale_bits", "Bitmap bits whose chunk was no longer free.", st.stale, g)
    yield gauge(
        "pagehint_isolated_bytes",
        "Memory isolated (off the free lists) now.",
        rt.mm.isolated_bytes,
        g,
    )
    yield gauge(
        "pagehint_free_bytes", "Free memory in the guest's buddy allocator.", rt.mm.free_bytes, g
    )
    yield gauge("pagehint_ram_bytes", "Guest RAM size.", rt.mm.ram_bytes, g)
    resident = rt.host.resident_bytes()
    if resident is not None:
        yield gauge(
            "pagehint_host_resident_bytes", "What the host holds for this guest.", resident, g
        )
    yield counter(
        "pagehint_alloc_ops", "Allocations made by the workload.", rt.ctx.stats.alloc_ops, g
    )
    yield counter(
        "pagehint_alloc_failures", "Allocations that failed.", rt.ctx.stats.alloc_failures, g
    )
    yield histogram(
        "pagehint_ack_latency_seconds",
        "Time from sending a report to its acknowledgement.",
        st.ack_histogram,
    )
    if driver is not None:
        yield from _driver_metrics(driver, g)


def _driver_metrics(driver: BalloonDriver, g: dict[str, str]) -> Iterator[Metric]:
    """What only a guest with a host has: the connection and its reports in flight."""
    yield gauge(
        "pagehint_connected",
        "1 while connected to the host.",
        1 if driver.connected.is_set() else 0,
        g,
    )
    yield counter(
        "pagehint_host_connects", "Sessions negotiated with the host.", driver.connects, g
    )
    yield gauge(
        "pagehint_oldest_report_age_seconds",
        "Age of the oldest report the host has not answered (0: none out).",
        driver.oldest_report_age(),
        g,
    )
    yield gauge(
        "pagehint_outstanding_report_bytes",
        "Memory in reports the host has not answered (isolated until it does).",
        driver.window.outstanding_pages * PAGE_SIZE,
        g,
    )
