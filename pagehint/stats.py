"""Small statistics helpers shared by guest, host and lab.

Plain Python: the allocator, the policies and the host's device count into
these; pagehint.metrics reads them for Prometheus from the outside.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from pagehint.schema import Percentiles


def percentiles(values: Sequence[float]) -> Percentiles:
    """p50, p99 and max, rounded to microseconds when the unit is ms."""
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
        return round(ordered[k], 4)

    return {"p50": at(50), "p99": at(99), "max": round(ordered[-1], 4)}


# Ack latency buckets, seconds.
ACK_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class LatencyHistogram:
    """Cumulative-friendly bucket counts of latencies in seconds (never trimmed)."""

    def __init__(self, bounds: Sequence[float] = ACK_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        # The first bucket whose upper bound is >= seconds (the last: +Inf).
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def buckets(self) -> list[tuple[str, int]]:
        out = []
        acc = 0
        for b, c in zip(self.bounds, self.counts, strict=False):
            acc += c
            out.append((repr(b), acc))
        out.append(("+Inf", self.count))
        return out
