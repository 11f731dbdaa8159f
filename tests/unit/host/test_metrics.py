"""The host's Prometheus metrics, read from the device at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from host.device import BalloonDevice
from host.memory.sim import SimBackend
from host.metrics import host_metrics
from pagehint.metrics import FnCollector
from virtqueue import features as F
from virtqueue.codec import Negotiation


def scrape(d: BalloonDevice) -> str:
    registry = CollectorRegistry()
    registry.register(FnCollector(lambda: host_metrics(d)))
    return generate_latest(registry).decode()


def samples(text: str) -> dict[str, float]:
    return {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
    }


def test_per_guest_figures_refusals_and_the_chain_histogram() -> None:
    d = BalloonDevice(SimBackend())
    s, _ = d.table.negotiate(Negotiation("g1", 64 << 20, 4096, F.mask(F.REPORTING), 0))
    assert d.handle_report(s, 1, [0], [9]) is not None  # 2 MiB reported
    d.handle_report(s, 2, [3], [9])  # misaligned: refused
    got = samples(scrape(d))
    assert got['pagehint_host_reported_bytes_total{guest="g1"}'] == 2 << 20
    assert got['pagehint_host_chains_total{guest="g1"}'] == 1
    assert got['pagehint_host_refused_chains_total{reason="misaligned"}'] == 1
    assert got["pagehint_host_guests"] == 1
    assert got["pagehint_host_chain_seconds_count"] == 1


def test_a_scrape_with_no_guests() -> None:
    got = samples(scrape(BalloonDevice(SimBackend())))
    assert got["pagehint_host_guests"] == 0 and got["pagehint_host_resident_total_bytes"] == 0


def test_each_guests_balloon_and_its_stats_by_linux_names() -> None:
    from host.balloon import handle_pages, set_target, take_stats
    from virtqueue.codec import PagesMsg, StatsMsg

    d = BalloonDevice(SimBackend())
    s, _ = d.table.negotiate(
        Negotiation("g1", 64 << 20, 4096, F.mask(F.REPORTING), 0, balloon=True)
    )
    d.table.negotiate(Negotiation("old", 64 << 20, 4096, F.mask(F.REPORTING), 0))  # none
    set_target(d.table, "g1", 8 << 20)
    handle_pages(s, PagesMsg(True, 1, [0, 1], 2))
    take_stats(s, StatsMsg([4], [123]))
    got = samples(scrape(d))
    assert got['pagehint_balloon_target_bytes{guest="g1"}'] == 8 << 20
    assert got['pagehint_balloon_actual_bytes{guest="g1"}'] == 2 * 4096
    assert got['pagehint_balloon_guest_stat{guest="g1",stat="free-memory"}'] == 123
    assert 'pagehint_balloon_target_bytes{guest="old"}' not in got
