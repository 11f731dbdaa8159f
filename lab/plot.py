"""PNG plots of timelines (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MIB = 1 << 20


def plot_series(
    series: Mapping[str, Sequence[dict[str, Any]]],
    out: Path,
    title: str,
    key: str = "host_resident_bytes",
    total: bool = False,
    ylabel: str = "host resident (MiB)",
) -> None:
    """One line per series over time; marks as dotted verticals; optionally a total line."""
    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    marks: dict[str, float] = {}
    for name, rows in series.items():
        pts = [(r["t"], r[key] / MIB) for r in rows if r.get(key) is not None]
        if pts:
            # Steps, not slopes: a row holds until the next one, and acknowledgement
            # rows put each drop where its chain was acknowledged.
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                label=name,
                linewidth=1.6,
                drawstyle="steps-post",
            )
        for r in rows:
            if r.get("mark") and r["mark"] not in marks:
                marks[r["mark"]] = r["t"]
    if total and len(series) > 1:
        # Each guest's last value in each half-second bin, summed across guests.
        buckets: dict[float, float] = {}
        for rows in series.values():
            last: dict[float, float] = {}
            for r in rows:
                if r.get(key) is not None:
                    last[round(r["t"] * 2) / 2] = r[key] / MIB
            for b, v in last.items():
                buckets[b] = buckets.get(b, 0.0) + v
        if buckets:
            xs = sorted(buckets)
            ax.plot(
                xs,
                [buckets[x] for x in xs],
                label="total (0.5 s bins)",
                color="black",
                linewidth=1.0,
                linestyle="--",
            )
    ymax = ax.get_ylim()[1]
    for label, t in marks.items():
        ax.axvline(t, color="grey", linestyle=":", linewidth=1)
        ax.text(t, ymax * 0.98, f" {label}", rotation=90, va="top", fontsize=8, color="dimgray")
    ax.set_xlabel("time (s)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
