"""Reading timelines: how fast host memory drops after a free."""

from __future__ import annotations

from collections.abc import Sequence

from pagehint.schema import Drop, ResidentPoint


def drop_times(rows: Sequence[ResidentPoint]) -> list[Drop]:
    """For each mark whose label contains "free": seconds to 50% and 90% of the eventual drop.

    The eventual drop is the highest value after the mark minus the lowest value
    before the next "free" mark (or the end). None where nothing dropped. Times
    come from the rows themselves, and the timeline has a row at every mark and
    every acknowledged report: a drop is timed at the acknowledgement that
    caused it, not at the next periodic sample.
    """
    marks = [(i, r["mark"]) for i, r in enumerate(rows) if r.get("mark")]
    out: list[Drop] = []
    for k, (i, label) in enumerate(marks):
        if "free" not in label:
            continue
        later = [j for j, lab in marks[k + 1 :] if "free" in lab]
        end = later[0] if later else len(rows)
        window = [(r["t"], v) for r in rows[i:end] if (v := r["host_resident_bytes"]) is not None]
        if not window:
            out.append(
                {"mark": label, "t": rows[i]["t"], "drop_bytes": 0, "t50_s": None, "t90_s": None}
            )
            continue
        # The host's figure lags the guest a little (touches are batched, stats
        # polled), so the drop is measured from the peak between the mark and the
        # low point, and the times from the mark itself.
        values = [v for _, v in window]
        low = min(values)
        low_at = values.index(low)
        start_at = max(range(low_at + 1), key=lambda j: values[j])
        start = values[start_at]
        drop = start - low
        t_mark = rows[i]["t"]
        after = window[start_at:]
        out.append(
            {
                "mark": label,
                "t": t_mark,
                "drop_bytes": drop,
                "t50_s": _reached(after, start - 0.5 * drop, t_mark) if drop > 0 else None,
                "t90_s": _reached(after, start - 0.9 * drop, t_mark) if drop > 0 else None,
            }
        )
    return out


def _reached(points: Sequence[tuple[float, int]], target: float, since: float) -> float:
    """Seconds from ``since`` to the first point at or below ``target``."""
    hit = next(t for t, v in points if v <= target)
    return round(hit - since, 3)


def peak(rows: Sequence[ResidentPoint]) -> int | None:
    values = [v for r in rows if (v := r["host_resident_bytes"]) is not None]
    return max(values) if values else None
