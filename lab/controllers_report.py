"""`pagehint controllers`' figures from its runs: a row per run, the table, the plot."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypedDict

from lab.controllers import (
    ControllersConfig,
    RunResult,
    Sample,
    group_of,
    run_all,
)
from lab.density import summary_number
from lab.pipeline import write_report
from lab.plot import plot_files, plots_available
from lab.table import render_table
from pagehint.units import format_size

GIB = float(1 << 30)


class RunRow(TypedDict):
    """One run's result (summary.json and `--json`)."""

    run: str
    policy: str
    controller: str | None
    host_gib_min: float  # what the host held for guests, integrated over the run
    host_peak_bytes: int
    swap_peak_bytes: int
    oom_kills: int
    alloc_stalls: int  # allocations that failed at first (asked the balloon)
    alloc_failures: int  # ... and failed even after it
    oom_deflated_bytes: int  # what deflate-on-oom took back from balloons
    fault_wait_s: float  # guests' waits on the host's swap
    reclaim_s: float | str  # the set amount reclaimed, or why not (reclaim_seconds)
    reclaim_target_bytes: int
    elapsed_s: float
    host_cpu_s: float | None
    errors: list[str]
    host_timeline: list[dict[str, float | int]]


class ControllersReport(TypedDict):
    guests: int
    guest_ram_bytes: int
    host_memory_bytes: int
    swap_bytes: int
    overcommit: float
    work_bytes: int
    phase_s: float
    balloon_min_bytes: int
    load_average_1m: float
    runs: list[RunRow]


def gib_minutes(samples: Sequence[Sample]) -> float:
    """∫ host resident dt, in GiB·min (trapezoids between samples)."""
    total = 0.0
    for a, b in itertools.pairwise(samples):
        total += (a.resident_bytes + b.resident_bytes) / 2 * (b.t - a.t)
    return round(total / GIB / 60, 2)


def reclaim_seconds(r: RunResult, target: int) -> float | str:
    """Seconds from the A guests' first free (their "free1" mark) until the host
    holds ``target`` bytes less for them than then; why not, if it did not:
    "killed" (one of them was OOM-killed first: its memory went with it), "late"
    (not before phase 3), "n/a" (the marks never came)."""
    group_a = sorted(g for g in r.marks if group_of(int(g[1:]) - 1) == "A")
    starts = [r.marks[g].get("free1") for g in group_a]
    if not group_a or any(s is None for s in starts):
        return "n/a"
    start = max(s for s in starts if s is not None)
    ends = [r.marks[g].get("busy3") for g in group_a]
    end = min((e for e in ends if e is not None), default=float("inf"))
    base: int | None = None
    for s in r.samples:
        if s.t < start:
            continue
        if any(g not in s.guests for g in group_a):
            return "killed"
        held = sum(s.guests[g] for g in group_a)
        if base is None:
            base = held
        elif held <= base - target:
            return round(s.t - start, 1)
        if s.t >= end:
            break
    return "late"


def run_row(cfg: ControllersConfig, r: RunResult) -> RunRow:
    sums = list(r.summaries.values())

    def total(key: str) -> float:
        return sum(summary_number(s, key) or 0 for s in sums)

    a_guests = sum(1 for i in range(cfg.guests) if group_of(i) == "A")
    target = a_guests * cfg.work_bytes // 2  # half of what they free after phase 1
    return RunRow(
        run=r.run.name,
        policy=r.run.policy,
        controller=r.run.controller,
        host_gib_min=gib_minutes(r.samples),
        host_peak_bytes=max((s.resident_bytes for s in r.samples), default=0),
        swap_peak_bytes=max((s.swap_used_bytes for s in r.samples), default=0),
        oom_kills=max((s.oom_kills for s in r.samples), default=0),
        alloc_stalls=int(total("balloon_alloc_stalls")),
        alloc_failures=int(total("alloc_failures")),
        oom_deflated_bytes=int(total("balloon_oom_deflated_bytes")),
        fault_wait_s=round(total("fault_wait_seconds"), 2),
        reclaim_s=reclaim_seconds(r, target),
        reclaim_target_bytes=target,
        elapsed_s=r.elapsed_s,
        host_cpu_s=None if r.host_cpu_s is None else round(r.host_cpu_s, 1),
        errors=r.errors,
        host_timeline=[
            {
                "t": s.t,
                "host_resident_bytes": s.resident_bytes,
                "swap_used_bytes": s.swap_used_bytes,
            }
            for s in r.samples
        ],
    )


def run_controllers(cfg: ControllersConfig) -> ControllersReport:
    results = run_all(cfg)
    return ControllersReport(
        guests=cfg.guests,
        guest_ram_bytes=cfg.guest_ram_bytes,
        host_memory_bytes=cfg.host_memory_bytes,
        swap_bytes=cfg.swap_bytes,
        overcommit=cfg.overcommit,
        work_bytes=cfg.work_bytes,
        phase_s=cfg.phase_s,
        balloon_min_bytes=cfg.balloon_min_bytes,
        load_average_1m=round(os.getloadavg()[0], 2),
        runs=[run_row(cfg, r) for r in results],
    )


def format_report(r: ControllersReport) -> str:
    head = (
        f"{r['guests']} guests × {format_size(r['guest_ram_bytes'])} on a host of "
        f"{format_size(r['host_memory_bytes'])} + {format_size(r['swap_bytes'])} swap "
        f"({r['overcommit']:g}× overcommitted); busy guests hold "
        f"{format_size(r['work_bytes'])}; phases of {r['phase_s']:g} s; balloon minimum "
        f"{format_size(r['balloon_min_bytes'])}"
    )
    header = [
        "run",
        "host GiB·min",
        "host peak",
        "peak swap",
        "OOM kills",
        "alloc stalls",
        "alloc failed",
        "swap waits",
        "reclaim",
    ]
    rows = []
    for x in r["runs"]:
        rs = x["reclaim_s"]
        reclaim = rs if isinstance(rs, str) else f"{rs:g} s"
        rows.append(
            [
                x["run"],
                f"{x['host_gib_min']:.2f}",
                format_size(x["host_peak_bytes"]),
                format_size(x["swap_peak_bytes"]),
                str(x["oom_kills"]),
                str(x["alloc_stalls"]),
                str(x["alloc_failures"]),
                f"{x['fault_wait_s']:.2f} s",
                reclaim,
            ]
        )
    target = r["runs"][0]["reclaim_target_bytes"] if r["runs"] else 0
    lines = [head, "", render_table(header, rows), ""]
    lines.append(
        f"reclaim: seconds from the first free of the guests busy in phase 1 until the host "
        f"held {format_size(target)} less for them (late: not before phase 3; killed: one "
        "of them was OOM-killed first)"
    )
    for x in r["runs"]:
        for e in x["errors"]:
            lines.append(f"{x['run']}: {e}")
    return "\n".join(lines)


def write_files(out: Path, report: ControllersReport) -> dict[str, str]:
    files = plot_files(out, None, plot_runs(report, out / "controllers.png"))
    write_report(out, {**report, "files": files})
    return files


def plot_runs(report: ControllersReport, path: Path) -> Path | None:
    """Host resident (top) and swap used (bottom) over time, a line per run."""
    runs = report["runs"]
    if not runs or not plots_available():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), dpi=100, sharex=True)
    for x in runs:
        tl: Sequence[Mapping[str, float | int]] = x["host_timeline"]
        t = [float(p["t"]) for p in tl]
        style = "-" if x["policy"] == "reporting" else "--"
        top.plot(t, [p["host_resident_bytes"] / GIB for p in tl], style, lw=1.2, label=x["run"])
        bottom.plot(t, [p["swap_used_bytes"] / GIB for p in tl], style, lw=1.2, label=x["run"])
    top.axhline(report["host_memory_bytes"] / GIB, color="grey", ls=":", lw=1)
    top.set_ylabel("host holds for guests (GiB)")
    bottom.set_ylabel("swap used (GiB)")
    bottom.set_xlabel("seconds since the runs started")
    top.legend(fontsize=8, ncol=2)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    top.set_title(
        f"{report['guests']} guests, {report['overcommit']:g}× overcommitted: "
        "reporting (solid) and balloon controllers",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
