"""Run one workload, scenario or trace across a grid of policies and knobs.

Every combination runs ``repeat`` times (seeds 0..repeat-1) as guests against
one host, ``parallel`` at a time; a ``none`` guest per seed is the baseline.
Per combination (means over repeats):

- ``saved_gib_s``: the area between the baseline's host-resident curve and the
  combination's, over the run (GiB·s): memory given back, and for how long;
- ``t90_s``: after each ``free`` mark, the time until the host-resident drop
  reached 90% of the lowest point before the next mark (mean over marks);
- chains, worker CPU seconds, allocation p99, allocation failures.
"""

from __future__ import annotations

import csv
import itertools
import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from lab.pipeline import collect, write_report
from lab.plot import plot_files, plot_series, plot_tradeoff
from lab.procs import ProcessGroup
from pagehint.config import BUILTIN_POLICIES
from pagehint.errors import UsageError
from pagehint.schema import GuestSummary, ResidentPoint, TimelineRow

log = logging.getLogger(__name__)

GIB = 1 << 30
# Knobs of the workload itself: the baseline runs with them too, so that a
# combination is compared with `none` under the same load.
WORKLOAD_KNOBS = ("speed", "rate")
# Knobs a sweep may vary (pagehint/cli/sweep.py turns each into its config field).
KNOBS = ("policy", "reporting-order", "delay", "capacity", "threshold", "rate", "speed")
# Knobs only one built-in policy reads. The other's runs would repeat each other
# (bitmap has no delay; reporting no threshold), so they are not varied for it:
# it runs once per setting of the other knobs. A policy of your own gets them all.
POLICY_ONLY = {"delay": "reporting", "threshold": "bitmap"}


class SweepRow(TypedDict):
    """One combination's figures, averaged over its seeds (None: no run gave one).
    In sweep.json and sweep.csv its knobs are columns of their own."""

    combination: str
    knobs: dict[str, str]
    runs: int  # finished without error
    saved_gib_s: float | None  # ∫ host resident dt, the baseline's minus this one's
    t90_s: float | None  # after each free mark, to 90% of the drop
    chains: float | None
    worker_s: float | None
    alloc_p99_ms: float | None
    alloc_failures: int
    data_loss_pages: int
    data_loss_checked: bool  # every run had real guest RAM to check (shm backend)
    failed_runs: int


class FailedRun(TypedDict):
    combination: str
    seed: int
    error: str


class SweepReport(TypedDict):
    """`pagehint sweep --json` and sweep.json (there, ``results`` are flat rows)."""

    grid: dict[str, list[str]]
    workload: list[str]
    ram: str | None
    duration_s: float
    repeat: int
    runs_planned: int
    runs_done: int
    runs_failed: list[FailedRun]
    interrupted: bool
    not_applied: list[str]  # knobs not varied for a policy that does not read them
    results: list[SweepRow]
    pareto: list[str]
    files: dict[str, str]


COLUMNS = [
    "combination",
    "runs",
    "saved_gib_s",
    "t90_s",
    "chains",
    "worker_s",
    "alloc_p99_ms",
    "alloc_failures",
    "data_loss_pages",
    "data_loss_checked",
    "failed_runs",
]


@dataclass(frozen=True)
class SweepConfig:
    grid: dict[str, tuple[str, ...]]  # knob -> values
    # Every run's guest flags but its host, id, seed and files, by combo_label of its
    # combination (the baselines' too): made once, from the run's checked GuestConfig.
    guest_args: dict[str, tuple[str, ...]]
    duration: float
    repeat: int
    parallel: int
    backend: str
    out: Path
    ram: str | None = None  # as given (the report says it); None: the guest's default
    workload: tuple[str, ...] = ()  # what every run runs, as flags (the report says it)


@dataclass
class Run:
    combo: dict[str, str]
    seed: int
    summary: GuestSummary | None = None  # None: the run failed (error) or never ran
    rows: list[TimelineRow] = field(default_factory=list)
    baseline: bool = False
    error: str | None = None

    @property
    def label(self) -> str:
        return ("baseline: " if self.baseline else "") + combo_label(self.combo)

    @property
    def load(self) -> tuple[tuple[str, str], ...]:
        """The workload knobs: which baseline this run is compared with."""
        return tuple((k, v) for k, v in self.combo.items() if k in WORKLOAD_KNOBS)


def combo_label(combo: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in combo.items()) or "default"


def applies(knob: str, policy: str | None) -> bool:
    """Does ``policy`` read ``knob`` (POLICY_ONLY)? A policy of your own may read any."""
    owner = POLICY_ONLY.get(knob)
    return owner is None or policy is None or policy == owner or policy not in BUILTIN_POLICIES


def combinations(grid: dict[str, tuple[str, ...]]) -> list[dict[str, str]]:
    """Every combination of the grid's values, without the knobs its policy does not
    read (each such combination once)."""
    keys = list(grid)
    out: list[dict[str, str]] = []
    for values in itertools.product(*grid.values()):
        combo = dict(zip(keys, values, strict=True))
        combo = {k: v for k, v in combo.items() if applies(k, combo.get("policy"))}
        if combo not in out:
            out.append(combo)
    return out


def baselines(combos: list[dict[str, str]]) -> list[dict[str, str]]:
    """The `none` runs the combinations are compared with: one per setting of the
    workload's own knobs (WORKLOAD_KNOBS) among them."""
    loads = dict.fromkeys(Run(c, 0).load for c in combos)
    return [{"policy": "none", **dict(load)} for load in loads]


def not_applied(grid: dict[str, tuple[str, ...]]) -> list[str]:
    """One line per knob of the grid that some of its policies do not read."""
    return [
        f"{knob}: {POLICY_ONLY[knob]} only, not varied for {', '.join(skipped)}"
        for knob in grid
        if (skipped := [p for p in grid.get("policy", ()) if not applies(knob, p)])
    ]


def _resident_points(rows: Sequence[ResidentPoint]) -> list[tuple[float, int]]:
    return [(r["t"], v) for r in rows if (v := r["host_resident_bytes"]) is not None]


def resident_area(rows: Sequence[ResidentPoint], end: float) -> float:
    """∫ host resident dt (byte·s) as steps, from 0 to ``end``."""
    pts = _resident_points(rows)
    area = 0.0
    for (t0, v), (t1, _) in itertools.pairwise([*pts, (end, 0)]):
        if t0 < end:
            area += v * (min(t1, end) - t0)
    return area


def time_to_90(rows: Sequence[ResidentPoint]) -> float | None:
    """Mean time, after each free mark, for host resident to make 90% of its drop."""
    marks = [(r["t"], r["mark"]) for r in rows if r.get("mark")]
    pts = _resident_points(rows)
    times = []
    for i, (tm, label) in enumerate(marks):
        if not label.startswith("free"):
            continue
        t_next = marks[i + 1][0] if i + 1 < len(marks) else float("inf")
        window = [(t, v) for t, v in pts if tm <= t < t_next]
        before = [v for t, v in pts if t <= tm]
        if not window or not before:
            continue
        start, low = before[-1], min(v for _, v in window)
        if start - low <= 0:
            continue
        target = start - 0.9 * (start - low)
        hit = next(t for t, v in window if v <= target)
        times.append(hit - tm)
    return statistics.fmean(times) if times else None


def _mean(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return round(statistics.fmean(got), 4) if got else None


def flat(row: SweepRow) -> dict[str, object]:
    """A row as sweep.json and sweep.csv have it: the knobs as columns."""
    out: dict[str, object] = {"combination": row["combination"], **row["knobs"]}
    out.update((k, v) for k, v in row.items() if k not in ("combination", "knobs"))
    return out


def aggregate(
    runs: list[Run], baseline: dict[tuple[tuple[tuple[str, str], ...], int], Run], duration: float
) -> list[SweepRow]:
    by_combo: dict[str, list[Run]] = {}
    for r in runs:
        by_combo.setdefault(r.label, []).append(r)
    out: list[SweepRow] = []
    for label, every in by_combo.items():
        rs = [r for r in every if r.error is None]
        failed = len(every) - len(rs)
        if not rs:
            out.append(_no_runs(label, every[0].combo, failed))
            continue
        summaries = [r.summary for r in rs if r.summary is not None]
        saved = []
        for r in rs:
            base = baseline.get((r.load, r.seed))
            if base is not None:
                gap = resident_area(base.rows, duration) - resident_area(r.rows, duration)
                saved.append(gap / GIB)
        out.append(
            {
                "combination": label,
                "knobs": rs[0].combo,
                "runs": len(rs),
                "saved_gib_s": _mean(list(saved)),
                "t90_s": _mean([time_to_90(r.rows) for r in rs]),
                "chains": _mean([s["chains"] for s in summaries]),
                "worker_s": _mean([s["worker_seconds"] for s in summaries]),
                "alloc_p99_ms": _mean([s["alloc_latency_ms"]["p99"] for s in summaries]),
                "alloc_failures": sum(s["alloc_failures"] for s in summaries),
                "data_loss_pages": sum(s["data_loss_pages"] for s in summaries),
                "data_loss_checked": all(s["data_loss_checked"] for s in summaries),
                "failed_runs": failed,
            }
        )
    return out


def _no_runs(label: str, knobs: dict[str, str], failed: int) -> SweepRow:
    return {
        "combination": label,
        "knobs": knobs,
        "runs": 0,
        "saved_gib_s": None,
        "t90_s": None,
        "chains": None,
        "worker_s": None,
        "alloc_p99_ms": None,
        "alloc_failures": 0,
        "data_loss_pages": 0,
        "data_loss_checked": False,
        "failed_runs": failed,
    }


def run_sweep(cfg: SweepConfig, progress: Callable[[str], None]) -> SweepReport:
    """Run the grid; on KeyboardInterrupt stop every process and keep what finished."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    combos = combinations(cfg.grid)
    # The baselines first (one per seed and workload-knob setting), then the grid.
    todo = [Run(c, seed, baseline=True) for c in baselines(combos) for seed in range(cfg.repeat)]
    todo += [Run(c, seed) for c in combos for seed in range(cfg.repeat)]
    done: list[Run] = []
    interrupted = False
    group = ProcessGroup(cfg.out)
    try:
        addr, _ = group.start_host(["--backend", cfg.backend])
        log.info(
            f"host on {addr} (backend {cfg.backend}); {len(todo)} runs, {cfg.parallel} at a time"
        )
        for line in not_applied(cfg.grid):
            log.info(line)
        for start in range(0, len(todo), cfg.parallel):
            batch = todo[start : start + cfg.parallel]
            procs = []
            for i, run in enumerate(batch, start):
                name = f"run{i:03d}"
                args = ["--host", addr, "--id", f"sweep-{i:03d}", "--seed", str(run.seed)]
                args += ["--timeline", str(cfg.out / f"{name}.timeline.jsonl")]
                args += cfg.guest_args[combo_label(run.combo)]
                procs.append((run, name, group.start_guest(args, name)))
            for run, name, p in procs:
                try:
                    run.summary, run.rows = collect(
                        group, p, name, cfg.out / f"{name}.timeline.jsonl", cfg.duration + 120
                    )
                except UsageError as e:  # this run failed; the others go on
                    run.error = str(e)
                done.append(run)
                what = f"FAILED: {run.error}" if run.error else "done"
                progress(f"[{len(done)}/{len(todo)}] {run.label} seed={run.seed}: {what}")
    except KeyboardInterrupt:
        interrupted = True
        log.info(f"interrupted: stopping every process; keeping {len(done)} finished runs")
    finally:
        group.close()
    return _report(cfg, done, len(todo), interrupted)


def _report(cfg: SweepConfig, done: list[Run], planned: int, interrupted: bool) -> SweepReport:
    baseline = {(r.load, r.seed): r for r in done if r.baseline and r.error is None}
    rows = aggregate([r for r in done if not r.baseline], baseline, cfg.duration)
    series = {r.label: r.rows for r in done if r.seed == 0 and r.rows}
    plot = None
    if series:
        plot = plot_series(
            series, cfg.out / "resident.png", title="sweep: host resident per combination (seed 0)"
        )
    tradeoff = plot_tradeoff([flat(r) for r in rows], cfg.out / "tradeoff.png")
    report: SweepReport = {
        "grid": {k: list(v) for k, v in cfg.grid.items()},
        "workload": list(cfg.workload),
        "ram": cfg.ram,
        "duration_s": cfg.duration,
        "repeat": cfg.repeat,
        "runs_planned": planned,
        "runs_done": len(done),
        "runs_failed": [
            {"combination": r.label, "seed": r.seed, "error": r.error}
            for r in done
            if r.error is not None
        ],
        "interrupted": interrupted,
        "not_applied": not_applied(cfg.grid),
        "results": rows,
        "pareto": pareto_front(rows),
        "files": {
            **plot_files(cfg.out, None, plot),
            "summary": str(cfg.out / "sweep.json"),
            "csv": str(cfg.out / "sweep.csv"),
            **({"tradeoff": str(tradeoff)} if tradeoff else {}),
        },
    }
    write_report(cfg.out, as_json(report), "sweep.json")
    with (cfg.out / "sweep.csv").open("w", newline="") as f:
        keys = [*COLUMNS, *cfg.grid]
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(keys)), extrasaction="ignore")
        w.writeheader()
        w.writerows(flat(r) for r in rows)
    return report


def as_json(report: SweepReport) -> dict[str, object]:
    """The report as written out: each result a flat row."""
    return {**report, "results": [flat(r) for r in report["results"]]}


def pareto_front(rows: list[SweepRow]) -> list[str]:
    """Combinations no other beats on both memory saved (more) and chains (fewer)."""
    pts = [
        (r["combination"], saved, cost)
        for r in rows
        if (saved := r["saved_gib_s"]) is not None and (cost := r["chains"]) is not None
    ]
    front = []
    for name, saved, cost in pts:
        dominated = any((s >= saved and c <= cost) and (s > saved or c < cost) for _, s, c in pts)
        if not dominated:
            front.append(name)
    return front


def format_sweep(report: SweepReport) -> str:
    from lab.table import render_table

    front = set(report["pareto"])
    header = [
        "combination",
        "runs",
        "saved GiB·s",
        "t90 s",
        "chains",
        "worker s",
        "alloc p99 ms",
        "fails",
    ]
    body = []
    for r in sorted(report["results"], key=lambda r: -(r["saved_gib_s"] or 0)):
        if not r["runs"]:
            continue
        body.append(
            [
                ("* " if r["combination"] in front else "  ") + r["combination"],
                str(r["runs"]),
                _fmt(r["saved_gib_s"]),
                _fmt(r["t90_s"]),
                _fmt(r["chains"], 0),
                _fmt(r["worker_s"], 3),
                _fmt(r["alloc_p99_ms"], 3),
                str(r["alloc_failures"]),
            ]
        )
    lines = [
        render_table(header, body),
        "",
        "* on the Pareto front (most memory saved for fewest chains)",
    ]
    lines += report["not_applied"]
    for f in report["runs_failed"]:
        lines.append(f"failed: {f['combination']} seed={f['seed']}: {f['error']}")
    if report["interrupted"]:
        lines.append(
            f"interrupted: {report['runs_done']} of {report['runs_planned']} runs finished"
        )
    return "\n".join(lines)


def _fmt(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"
