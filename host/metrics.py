"""The host's Prometheus metrics (pagehint_host_*), read at scrape time."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from host.control.runner import ControllerRunner
from host.device import BalloonDevice
from host.limits import ConnectionWatch
from host.sessions import Session
from pagehint.metrics import counter, gauge, histogram
from virtqueue.contract import PAGE_SIZE

log = logging.getLogger(__name__)


def host_metrics(
    device: BalloonDevice,
    watch: ConnectionWatch | None = None,
    controller: ControllerRunner | None = None,
) -> Iterator[Metric]:
    sessions = list(device.table.sessions.values())
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
    for reason, n in sorted(device.metrics.refusals.items()):
        refused.add_metric([reason], n)
    yield refused
    yield counter(
        "pagehint_host_malformed_messages",
        "Requests and stream messages that did not decode, or carried nothing (any RPC).",
        device.metrics.refusals.get("malformed", 0),
    )
    yield gauge(
        "pagehint_host_resident_total_bytes",
        "Memory held for all guests.",
        device.resident_pages() * PAGE_SIZE,
    )
    yield gauge("pagehint_host_guests", "Guests with a session.", len(sessions))
    yield counter("pagehint_host_chains_all", "Chains used, all guests.", device.metrics.chains)
    yield from _turned_away(device, watch)
    yield from _host_memory(device, sessions)
    yield from _balloons(sessions)
    if controller is not None:
        yield from _controller(controller)
    yield histogram(
        "pagehint_host_chain_seconds",
        "Time to check and discard one chain.",
        device.metrics.chain_histogram,
    )


def _balloons(sessions: list[Session]) -> Iterator[Metric]:
    """The rest of the balloon, per guest with one: target, actual, and its last
    stats by Linux's tag names (issue 24)."""
    target = GaugeMetricFamily(
        "pagehint_balloon_target_bytes", "The host's balloon target, per guest.", labels=["guest"]
    )
    actual = GaugeMetricFamily(
        "pagehint_balloon_actual_bytes", "Pages in each guest's balloon.", labels=["guest"]
    )
    stats = GaugeMetricFamily(
        "pagehint_balloon_guest_stat",
        "Each guest's last balloon stats (VIRTIO_BALLOON_S_*), by Linux's name.",
        labels=["guest", "stat"],
    )
    for s in sessions:
        b = s.balloon
        if b is None:
            continue
        target.add_metric([s.guest_id], b.target_pages * PAGE_SIZE)
        actual.add_metric([s.guest_id], b.actual_pages * PAGE_SIZE)
        for name, value in sorted(b.stats.items()):
            stats.add_metric([s.guest_id, name], value)
    yield target
    yield actual
    yield stats


def _controller(c: ControllerRunner) -> Iterator[Metric]:
    """The balloon controller (--controller): what it decided, what was refused."""
    r = c.record
    yield counter("pagehint_controller_decisions", "Calls of the controller answered.", r.decisions)
    yield counter(
        "pagehint_controller_targets_set", "Balloon targets the controller changed.", r.targets_set
    )
    refused = CounterMetricFamily(
        "pagehint_controller_refused_entries",
        "Entries of the controller's answers refused, by reason.",
        labels=["reason"],
    )
    for reason, n in sorted(r.refused.items()):
        refused.add_metric([reason], n)
    yield refused
    yield gauge(
        "pagehint_controller_running",
        "1 while the controller runs, 0 once switched off.",
        0 if r.broken else 1,
    )


def _host_memory(device: BalloonDevice, sessions: list[Session]) -> Iterator[Metric]:
    """The host memory model's figures (--host-memory; none without it)."""
    m = device.backend.model
    if m is None:
        return
    yield gauge(
        "pagehint_host_memory_bytes", "The host's memory for guests.", m.memory_pages * PAGE_SIZE
    )
    yield gauge("pagehint_host_swap_bytes", "The host's swap.", m.swap_pages * PAGE_SIZE)
    yield gauge("pagehint_host_swap_used_bytes", "Swap in use.", m.swap_used * PAGE_SIZE)
    yield counter("pagehint_host_swap_ins", "Pages read back from swap (major faults).", m.swap_ins)
    yield counter("pagehint_host_swap_outs", "Pages written to swap.", m.swap_outs)
    yield counter("pagehint_host_oom_kills", "Guests ended by the host's OOM killer.", m.oom_kills)
    major = CounterMetricFamily(
        "pagehint_host_major_faults",
        "Touches of swapped pages (swap-ins), per guest.",
        labels=["guest"],
    )
    minor = CounterMetricFamily(
        "pagehint_host_minor_faults",
        "Touches of absent pages (zero fill), per guest.",
        labels=["guest"],
    )
    swapped = GaugeMetricFamily(
        "pagehint_host_swapped_bytes", "Each guest's pages in swap.", labels=["guest"]
    )
    for s in sessions:
        ma, mi = s.ram.faults()
        major.add_metric([s.guest_id], ma)
        minor.add_metric([s.guest_id], mi)
        swapped.add_metric([s.guest_id], s.ram.swapped_pages() * PAGE_SIZE)
    yield major
    yield minor
    yield swapped


def _turned_away(device: BalloonDevice, watch: ConnectionWatch | None) -> Iterator[Metric]:
    """What protects the host from its clients: refused negotiations, the ledgers'
    own memory, descriptors and connections at their cap."""
    refused = CounterMetricFamily(
        "pagehint_host_refused_negotiations",
        "Calls turned away, by reason (session_limit, peer_limit, calls_per_peer, "
        "in_use, not_permitted, no_room).",
        labels=["reason"],
    )
    for reason, n in sorted(device.metrics.turned_away.items()):
        refused.add_metric([reason], n)
    yield refused
    yield gauge(
        "pagehint_host_ledger_bytes",
        "Host memory the backend spends on its own books (sim: the ledgers).",
        device.backend.overhead_bytes(),
    )
    yield counter(
        "pagehint_host_queue_socket_refused_connections",
        "Connections to the queue socket closed at once: its share of --max-connections "
        "was taken (0 without --queue-socket).",
        device.metrics.queue_socket_refused,
    )
    if watch is not None:
        yield gauge(
            "pagehint_host_open_descriptors",
            "Descriptors the host held at the janitor's last look.",
            watch.descriptors,
        )
        yield gauge("pagehint_host_max_connections", "The connection cap.", watch.cap)
        yield counter(
            "pagehint_host_connection_cap_reached",
            "Looks (one a second) that found the connections at their cap: new "
            "connections were being turned away.",
            watch.at_cap,
        )


def start_host_metrics(
    device: BalloonDevice,
    addr: str,
    port: int,
    watch: ConnectionWatch | None = None,
    controller: ControllerRunner | None = None,
) -> object:
    from pagehint.metrics import serve

    server, bound = serve(lambda: host_metrics(device, watch, controller), port, addr)
    log.info(f"metrics on http://{addr}:{bound}/metrics")
    return server
