"""`pagehint demo`: one host, a few guests, a scenario whose phases show hinting at work."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from lab.live import Ticker, progress_line
from lab.pipeline import publish_timelines, with_figures, write_report
from lab.plot import files_line
from lab.procs import ProcessGroup, read_timeline
from lab.table import render_table
from pagehint.schema import GuestSummary
from pagehint.units import format_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    guests: int
    ram: str
    policies: tuple[str, ...]
    backend: str
    duration: float
    scenario: str
    out: Path
    json: bool


def shm_available() -> bool:
    return os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK)


class DemoReport(TypedDict):
    """`pagehint demo --json`, and summary.json."""

    backend: str
    guests: dict[str, GuestSummary]  # with host_resident_peak_bytes and drops
    host_resident_end_bytes: int  # all guests together, at the end
    data_loss_pages: int
    data_loss_checked: bool  # every guest had real RAM to check (shm backend)
    elapsed_s: float
    files: dict[str, str]


def run_demo(cfg: DemoConfig) -> DemoReport:
    cfg.out.mkdir(parents=True, exist_ok=True)
    names = [f"guest-{i + 1}" for i in range(cfg.guests)]
    policy_of = {n: cfg.policies[i % len(cfg.policies)] for i, n in enumerate(names)}
    timelines = {n: cfg.out / f"{n}.timeline.jsonl" for n in names}
    t0 = time.monotonic()
    summaries = _run_guests(cfg, policy_of, timelines, t0)
    rows = {n: read_timeline(timelines[n]) for n in names}
    files = publish_timelines(
        cfg.out,
        rows,
        lambda n: {"guest": n, "policy": policy_of[n]},
        title=f"pagehint demo — host memory per guest ({cfg.backend} backend)",
        legend=lambda n: f"{n} ({policy_of[n]})",
        total=True,
    )
    for n, s in summaries.items():
        with_figures(s, rows[n])
    report: DemoReport = {
        "backend": cfg.backend,
        "guests": summaries,
        "host_resident_end_bytes": sum(s["host_resident_bytes"] or 0 for s in summaries.values()),
        "data_loss_pages": sum(s["data_loss_pages"] for s in summaries.values()),
        "data_loss_checked": all(s["data_loss_checked"] for s in summaries.values()),
        "elapsed_s": round(time.monotonic() - t0, 1),
        "files": files,
    }
    write_report(cfg.out, report)
    return report


def _run_guests(
    cfg: DemoConfig,
    policy_of: dict[str, str],
    timelines: dict[str, Path],
    t0: float,
) -> dict[str, GuestSummary]:
    """One host and the guests, all at once, with a progress line; their summaries."""
    group = ProcessGroup(cfg.out)
    try:
        addr, _host = group.start_host(["--backend", cfg.backend])
        log.info(f"host on {addr}, backend {cfg.backend}; starting {cfg.guests} guests")
        procs = {}
        for i, n in enumerate(policy_of):
            args = ["--host", addr, "--id", n, "--ram", cfg.ram, "--policy", policy_of[n]]
            args += ["--scenario", cfg.scenario, "--duration", str(cfg.duration)]
            args += ["--timeline", str(timelines[n]), "--seed", str(i)]
            procs[n] = group.start_guest(args, n)
        ticker = Ticker(sys.stderr, 1.0 if sys.stderr.isatty() else 3.0)
        labels = {f"{n}[{policy_of[n]}]": timelines[n] for n in policy_of}
        while any(p.poll() is None for p in procs.values()):
            if not cfg.json:
                ticker.maybe(lambda: progress_line(time.monotonic() - t0, labels))
            time.sleep(0.2)
        return {n: group.guest_summary(p, n, timeout=30) for n, p in procs.items()}
    finally:
        group.close()


def format_demo(report: DemoReport) -> str:
    header = [
        "guest",
        "policy",
        "reported",
        "host peak",
        "host end",
        "to 90% after free",
        "chains",
        "data loss",
    ]
    rows = [header]
    for n, s in report["guests"].items():
        drops = [d for d in s.get("drops", []) if d["t90_s"] is not None]
        rows.append(
            [
                n,
                s["policy"],
                format_size(s["reported_bytes"]),
                format_size(s.get("host_resident_peak_bytes") or 0),
                format_size(s["host_resident_bytes"] or 0),
                "—" if not drops else f"{drops[0]['t90_s']:.1f} s",
                str(s["chains"]),
                str(s["data_loss_pages"]) if s["data_loss_checked"] else "not measured",
            ]
        )
    lines = [render_table(header, rows[1:])]
    lines.append("")
    loss = (
        f"{report['data_loss_pages']} pages ({report['backend']} backend)"
        if report["data_loss_checked"]
        else f"not measured ({report['backend']} backend has no real memory; use --backend shm)"
    )
    lines.append(
        f"host holds {format_size(report['host_resident_end_bytes'])} for all guests at the end; "
        f"data loss: {loss}"
    )
    lines.append(files_line(report["files"]))
    return "\n".join(lines)
