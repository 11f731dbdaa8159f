"""Run one scenario or workload under several policies against a host; compare them."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from lab.pipeline import collect, publish_timelines, write_report
from lab.procs import ProcessGroup
from lab.table import render_table
from pagehint.schema import Drop, GuestSummary, TimelineRow
from pagehint.units import format_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompareConfig:
    policies: tuple[str, ...]
    ram: str
    scenario: str | None
    workload: str | None
    duration: float | None
    seed: int
    host: str | None
    backend: str
    out: Path
    extra_guest_args: tuple[str, ...] = ()
    # With mutual TLS a guest may only use its certificate's name: every policy's
    # guest then runs under it (one after another, so they never overlap).
    guest_id: str | None = None
    # Set in the guests' environment (a token: never on a command line, which
    # any user can read in ps).
    guest_env: dict[str, str] = field(default_factory=dict)
    # More flags of the host it starts (--host-memory, --swap).
    host_args: tuple[str, ...] = ()


class CompareReport(TypedDict):
    """`pagehint compare --json`, and summary.json."""

    policies: list[str]
    ram: str
    scenario: str | None
    workload: str | None
    results: dict[str, GuestSummary]  # by policy, with host_resident_peak_bytes and drops
    files: dict[str, str]


def run_compare(cfg: CompareConfig) -> CompareReport:
    cfg.out.mkdir(parents=True, exist_ok=True)
    group = ProcessGroup(cfg.out)
    results: dict[str, GuestSummary] = {}
    timelines: dict[str, list[TimelineRow]] = {}
    try:
        addr = cfg.host
        if addr is None:
            addr, _ = group.start_host(["--backend", cfg.backend, *cfg.host_args])
            log.info(f"started a host on {addr} (backend {cfg.backend} {' '.join(cfg.host_args)})")
        for policy in cfg.policies:
            log.info(f"running policy {policy}")
            results[policy], timelines[policy] = _run_policy(cfg, group, addr, policy)
    finally:
        group.close()
    files = publish_timelines(
        cfg.out,
        timelines,
        lambda policy: {"policy": policy},
        title=f"host memory held per policy — {_label(cfg)} on {cfg.ram}",
    )
    report: CompareReport = {
        "policies": list(cfg.policies),
        "ram": cfg.ram,
        "scenario": cfg.scenario,
        "workload": cfg.workload,
        "results": results,
        "files": files,
    }
    write_report(cfg.out, report)
    return report


def _run_policy(
    cfg: CompareConfig, group: ProcessGroup, addr: str, policy: str
) -> tuple[GuestSummary, list[TimelineRow]]:
    """One guest under ``policy`` to the end: its summary and its timeline."""
    # A policy of your own is named by a path: keep file names and ids flat.
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", policy)
    name = f"compare-{safe}"
    tl = cfg.out / f"{safe}.timeline.jsonl"
    args = ["--host", addr, "--id", cfg.guest_id or name, "--ram", cfg.ram]
    args += ["--policy", policy, "--seed", str(cfg.seed), "--timeline", str(tl)]
    args += cfg.extra_guest_args
    if cfg.scenario is not None:
        args += ["--scenario", cfg.scenario]
    if cfg.workload is not None:
        args += ["--workload", cfg.workload]
    if cfg.duration is not None:
        args += ["--duration", str(cfg.duration)]
    p = group.start_guest(args, name, env=cfg.guest_env)
    # A guest the host's OOM killer ended (exit 3) is a result, not a failure.
    return collect(group, p, name, tl, timeout=(cfg.duration or 120) + 120, oom_ok=True)


def _label(cfg: CompareConfig) -> str:
    return Path(cfg.scenario).stem if cfg.scenario else str(cfg.workload)


def _secs(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f} s"


def format_table(report: CompareReport) -> str:
    header = [
        "policy",
        "reported",
        "host end",
        "host peak",
        "to 50%",
        "to 90%",
        "reports",
        "worker CPU",
        "alloc p99",
    ]
    host_memory = any("major_faults" in s for s in report["results"].values())
    if host_memory:  # the host had --host-memory: what its memory cost each guest
        header += ["major faults", "fault wait", "in swap", "OOM"]
    rows = [header]
    for policy, s in report["results"].items():
        drops = [d for d in s.get("drops", []) if d["t50_s"] is not None]
        first: Drop | None = drops[0] if drops else None
        p99 = s["alloc_latency_ms"]["p99"]
        peak_ = s.get("host_resident_peak_bytes")
        end = s["host_resident_bytes"]
        rows.append(
            [
                policy,
                format_size(s["reported_bytes"]),
                "n/a" if end is None else format_size(end),
                "n/a" if peak_ is None else format_size(peak_),
                _secs(None if first is None else first["t50_s"]),
                _secs(None if first is None else first["t90_s"]),
                str(s["chains"]),
                f"{s['worker_seconds'] * 1000:.1f} ms",
                "n/a" if p99 is None else f"{p99 * 1000:.1f} µs",
            ]
        )
        if host_memory:
            swapped = s.get("swapped_bytes")
            rows[-1] += [
                f"{s.get('major_faults', 0):,}",
                _secs(s.get("fault_wait_seconds", 0.0)),
                "n/a" if swapped is None else format_size(swapped),
                "killed" if s.get("oom_killed") else "no",
            ]
    return render_table(header, rows[1:])
