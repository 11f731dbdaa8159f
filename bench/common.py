"""Helpers for benchmarks: interleaved rounds so noise hits both sides alike."""

from __future__ import annotations

import resource
import statistics
from collections.abc import Callable


def interleave(cases: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each case once per round, in alternating order; return per-case samples."""
    out: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(rounds):
        order = names if r % 2 == 0 else list(reversed(names))
        for name in order:
            out[name].append(cases[name]())
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
