"""PNG plots of timelines (matplotlib, headless).

matplotlib comes with the optional `lab` extra (`pip install 'pagehint[lab]'`):
the host and guest services, and their container image, do without it. Without
it the lab commands still run and write their JSON; only the PNG is skipped.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pagehint.schema import ResidentPoint

if TYPE_CHECKING:  # matplotlib is optional: imported only when a plot is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MIB = 1 << 20
Legend = Literal["upper right", "best"]

PLOTS_MISSING = "plot skipped: matplotlib is not installed (pip install 'pagehint[lab]')"


def plots_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot_files(out: Path, timeline: str | None, plot: Path | None) -> dict[str, str]:
    """The files a lab run wrote, for its summary: summary.json, the timeline, the plot."""
    files = {"summary": str(out / "summary.json")}
    if timeline:
        files["timeline"] = str(out / timeline)
    if plot is not None:
        files["plot"] = str(plot)
    else:
        files["plot_skipped"] = PLOTS_MISSING
    return files


def files_line(files: dict[str, str]) -> str:
    """`wrote DIR/a, b, c` for a command's last line, plus why a plot is missing."""
    paths = [Path(v) for k, v in files.items() if k != "plot_skipped"]
    line = f"wrote {paths[0].parent}/" + ", ".join(p.name for p in paths)
    if "plot_skipped" in files:
        line += f"\n{files['plot_skipped']}"
    return line


def plot_series(
    series: Mapping[str, Sequence[ResidentPoint]],
    out: Path,
    title: str,
    total: bool = False,
    ylabel: str = "host resident (MiB)",
) -> Path | None:
    """One line per series over time; marks as dotted verticals; optionally a total line.

    Returns the file written, or None when matplotlib is not installed.
    """
    if not plots_available():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    marks: dict[str, float] = {}
    for name, rows in series.items():
        pts = [(r["t"], v / MIB) for r in rows if (v := r["host_resident_bytes"]) is not None]
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
            mark = r.get("mark")
            if mark and mark not in marks:
                marks[mark] = r["t"]
    if total and len(series) > 1:
        _plot_total(ax, series)
    ymax = ax.get_ylim()[1]
    for label, t in marks.items():
        ax.axvline(t, color="grey", linestyle=":", linewidth=1)
        ax.text(t, ymax * 0.98, f" {label}", rotation=90, va="top", fontsize=8, color="dimgray")
    return _finish(fig, ax, out, ("time (s)", ylabel, title), "upper right")


def plot_tradeoff(rows: Sequence[Mapping[str, object]], out: Path) -> Path | None:
    """Memory saved (GiB·s) against chains sent, one point per combination (a sweep's
    result rows); the Pareto front (most saved for fewest chains) joined by a line."""
    pts = [
        (float(chains), float(saved), str(r["combination"]))
        for r in rows
        if isinstance(chains := r.get("chains"), int | float)
        and isinstance(saved := r.get("saved_gib_s"), int | float)
    ]
    if not pts or not plots_available():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = sorted(
        p
        for p in pts
        if not any((q[1] >= p[1] and q[0] <= p[0]) and (q[1] > p[1] or q[0] < p[0]) for q in pts)
    )
    fig, ax = plt.subplots(figsize=(9, 6), dpi=100)
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="tab:blue", zorder=2)
    for x, y, label in pts:
        ax.annotate(label, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.plot(
        [p[0] for p in front],
        [p[1] for p in front],
        color="tab:red",
        linewidth=1.2,
        marker="o",
        label="Pareto front",
        zorder=3,
    )
    labels = (
        "chains sent (cost)",
        "memory returned vs none (GiB·s)",
        "sweep: memory saved against cost",
    )
    return _finish(fig, ax, out, labels, "best")


def _finish(fig: Figure, ax: Axes, out: Path, labels: tuple[str, str, str], legend: Legend) -> Path:
    """Axis labels and title, a light grid, the legend, and the PNG written."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(labels[2])
    ax.grid(alpha=0.3)
    ax.legend(loc=legend, fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _plot_total(ax: Axes, series: Mapping[str, Sequence[ResidentPoint]]) -> None:
    """Each guest's last value in each half-second bin, summed across guests."""
    buckets: dict[float, float] = {}
    for rows in series.values():
        last: dict[float, float] = {}
        for r in rows:
            if (held := r["host_resident_bytes"]) is not None:
                last[round(r["t"] * 2) / 2] = held / MIB
        for b, mib in last.items():
            buckets[b] = buckets.get(b, 0.0) + mib
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
