"""The lab commands' shared pipeline, after their processes ran: collect each
guest (summary and timeline, with the drop figures), publish the timelines
(one labelled JSON-lines file and a plot), and write the report.

demo, compare, loadtest and sweep differ in what they start and how they
watch it (lab/procs.py starts and stops every process); what they hand back to
the user is built here, so every command's files look alike.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from lab.analysis import drop_times, peak
from lab.plot import plot_files, plot_series
from lab.procs import ProcessGroup, read_timeline, write_timelines
from pagehint.schema import GuestSummary, TimelineRow

TIMELINE = "timeline.jsonl"


def with_figures(summary: GuestSummary, rows: Sequence[TimelineRow]) -> GuestSummary:
    """The summary with what its timeline shows: the host's peak and each drop."""
    summary["host_resident_peak_bytes"] = peak(rows)
    summary["drops"] = drop_times(rows)
    return summary


def collect(
    group: ProcessGroup,
    p: subprocess.Popen[str],
    name: str,
    timeline: Path,
    timeout: float,
    oom_ok: bool = False,
) -> tuple[GuestSummary, list[TimelineRow]]:
    """A guest process to its end: its summary (with figures) and its timeline rows.
    ``oom_ok``: a guest the host's OOM killer ended is a result (its summary says so)."""
    summary = group.guest_summary(p, name, timeout, oom_ok=oom_ok)
    rows = read_timeline(timeline)
    return with_figures(summary, rows), rows


def publish_timelines(
    out: Path,
    rows: Mapping[str, Sequence[TimelineRow]],
    labels: Callable[[str], Mapping[str, str]],
    title: str,
    legend: Callable[[str], str] = str,
    total: bool = False,
) -> dict[str, str]:
    """Every run's rows in out/timeline.jsonl (each with its ``labels``) and one
    plot line per run (named by ``legend``); the files, for the report."""
    write_timelines(out / TIMELINE, rows, labels)
    plot = plot_series(
        {legend(n): rs for n, rs in rows.items()}, out / "timeline.png", title=title, total=total
    )
    return plot_files(out, TIMELINE, plot)


def write_report(out: Path, report: Mapping[str, object], name: str = "summary.json") -> None:
    (out / name).write_text(json.dumps(report, indent=2))
