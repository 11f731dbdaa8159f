"""Reading timelines: how fast host memory drops after a free."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def drop_times(
    rows: Sequence[dict[str, Any]], key: str = "host_resident_bytes"
) -> list[dict[str, Any]]:
    """For each mark whose label contains "free": seconds to 50% and 90% of the eventual drop.

    The eventual drop is the highest value after the mark minus the lowest value
    before the next "free" mark (or the end). None where nothing dropped. Times
    come from the rows themselves, and the timeline has a row at every mark and
    every acknowledged report: a drop is timed at the acknowledgement that
    caused it, not at the next periodic sample.
    """
    marks = [(i, r["mark"]) for i, r in enumerate(rows) if r.get("mark")]
    out: list[dict[str, Any]] = []
    for k, (i, label) in enumerate(marks):
        if "free" not in label:
            continue
        later = [j for j, lab in marks[k + 1 :] if "free" in lab]
        end = later[0] if later else len(rows)
        window = [r for r in rows[i:end] if r.get(key) is not None]
        if not window:
            out.append(
                {"mark": label, "t": rows[i]["t"], "drop_bytes": 0, "t50_s": None, "t90_s": None}
            )
            continue
        # The host's figure lags the guest a little (touches are batched, stats
        # polled), so the drop is measured from the peak between the mark and the
        # low point, and the times from the mark itself.
        values = [r[key] for r in window]
        low = min(values)
        low_at = values.index(low)
        start_at = max(range(low_at + 1), key=lambda j: values[j])
        start = values[start_at]
        drop = start - low
        entry: dict[str, Any] = {"mark": label, "t": rows[i]["t"], "drop_bytes": drop}
        for frac, name in ((0.5, "t50_s"), (0.9, "t90_s")):
            entry[name] = None
            if drop > 0:
                target = start - frac * drop
                hit = next(r for r in window[start_at:] if r[key] <= target)
                entry[name] = round(hit["t"] - rows[i]["t"], 3)
        out.append(entry)
    return out


def peak(rows: Sequence[dict[str, Any]], key: str = "host_resident_bytes") -> int | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return max(values) if values else None
