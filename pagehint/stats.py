"""Small statistics helpers shared by guest, host and lab."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile, q in [0, 100]; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p99 and max, rounded to microseconds when the unit is ms."""
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
        return round(ordered[k], 4)

    return {"p50": at(50), "p99": at(99), "max": round(ordered[-1], 4)}
