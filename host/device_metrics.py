"""What the balloon device counts, in one record (as Firecracker's balloon keeps its
counters in ``balloon/metrics.rs``): the device and the session table count into
it, and everything that reports figures — the Stats answer (host/figures.py), the
Prometheus collector (host/metrics.py), the logs — reads it from there."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pagehint.stats import LatencyHistogram


@dataclass
class DeviceMetrics:
    """The host's counters since it started, over every session."""

    chains: int = 0  # chains checked and discarded (DONE), poison-skipped ones too
    failed_chains: int = 0  # passed the checks, their discard failed (DISCARD_FAILED)
    # Refused chains and messages by the rule they broke ("out_of_range", ...).
    refusals: Counter[str] = field(default_factory=Counter)
    # Failed discards by errno name ("EIO", ...).
    discard_errors: Counter[str] = field(default_factory=Counter)
    # Negotiations turned away by reason (limits, quotas, take-overs).
    turned_away: Counter[str] = field(default_factory=Counter)
    # Connections to the queue socket closed at once: its share of the connection
    # cap was taken (host/queue_socket.py).
    queue_socket_refused: int = 0
    # The most the host held for all guests at once, in pages (sampled at touches
    # and whenever figures are asked for: residency only rises on touches).
    peak_resident_pages: int = 0
    # Seconds each chain's discard took (the memory backend's work).
    chain_histogram: LatencyHistogram = field(default_factory=LatencyHistogram)
