"""`pagehint density`'s results: per policy and per guest, as JSON, text, CSV and a plot.

The figures (lab/density.py gathers them):

- guests launched, and guests that fit: those launched before the one during
  whose run the host first swapped (or first killed); the cover letter's
  "Without hinting = 3, swap usage at the end 1.1GB" counts the guest that
  pushed the host into swap, so "launched" is its 3 and "fit" 2;
- swap used at each launch and at the end (the letter's "swap usage at the end");
- each guest's touch: seconds from its "touch" mark to its "free" mark (its own
  clock), and the part of them its workload waited for the host's faults
  (``fault_wait_seconds`` of its summary, when the guest writes it);
- OOM kills, and which guests the host killed.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

from guest.workloads.boot import format_orders
from lab.density import (
    SCENARIO,
    DensityConfig,
    PolicyRow,
    PolicyRun,
    run_policy,
    scenario_text,
    summary_number,
)
from lab.pipeline import write_report
from lab.plot import plots_available
from lab.table import render_table
from pagehint.units import format_size

log = logging.getLogger(__name__)

GIB = float(1 << 30)
CSV_FIELDS = (
    "policy",
    "guest",
    "launched_s",
    "swap_used_at_launch_bytes",
    "host_resident_at_launch_bytes",
    "touch_s",
    "fault_wait_s",
    "major_faults",
    "alloc_failures",
    "data_loss_pages",
    "ending",
    "host_resident_for_guest_bytes",
    "swap_used_after_bytes",
    "oom_killed",
)


class DensityReport(TypedDict):
    """`pagehint density --json` (one document), and summary.json (with timelines)."""

    mode: str
    host_memory_bytes: int
    swap_bytes: int
    guest_ram_bytes: int
    touch_bytes: int
    boot_footprint_bytes: int
    boot_orders: str
    boot_holes: float
    # What the host charged per guest for its VMM (its figure; None: not reported).
    vmm_overhead_bytes: int | None
    backend: str
    guests_max: int
    settle_s: float
    interval_s: float | None
    elapsed_s: float
    policies: list[PolicyRow]
    files: dict[str, str]


def run_density(cfg: DensityConfig) -> DensityReport:
    """Every policy in turn, each against a fresh host; then the files."""
    t0 = time.monotonic()
    (cfg.out / SCENARIO).write_text(scenario_text(cfg.touch_bytes), encoding="utf-8")
    runs: list[PolicyRun] = []
    for policy in cfg.policies:
        log.info(f"policy {policy}: a fresh host, guests one after another")
        runs.append(run_policy(cfg, policy))
    vmm = next((r.host.vmm_overhead_bytes for r in runs if r.host is not None), None)
    report: DensityReport = {
        "mode": cfg.mode,
        "host_memory_bytes": cfg.host_memory_bytes,
        "swap_bytes": cfg.swap_bytes,
        "guest_ram_bytes": cfg.guest_ram_bytes,
        "touch_bytes": cfg.touch_bytes,
        "boot_footprint_bytes": cfg.boot.size_bytes,
        "boot_orders": format_orders(cfg.boot.orders),
        "boot_holes": cfg.boot.holes,
        "vmm_overhead_bytes": vmm,
        "backend": cfg.backend,
        "guests_max": cfg.plan.guests_max,
        "settle_s": cfg.plan.settle,
        "interval_s": cfg.plan.interval,
        "elapsed_s": round(time.monotonic() - t0, 1),
        "policies": [policy_row(r) for r in runs],
        "files": {},
    }
    report["files"] = write_files(cfg.out, report)
    return report


def _whole(v: float | None) -> int | None:
    return None if v is None else round(v)


def policy_row(run: PolicyRun) -> PolicyRow:
    out = run.outcome
    guests: list[dict[str, object]] = []
    for rec in out.launches:
        s = run.summaries.get(rec.guest)
        guests.append(
            {
                "guest": rec.guest,
                "launched_s": rec.launched_s,
                "swap_used_at_launch_bytes": rec.swap_used_at_launch_bytes,
                "host_resident_at_launch_bytes": rec.host_resident_at_launch_bytes,
                "touch_s": rec.touch_s,
                "fault_wait_s": summary_number(s, "fault_wait_seconds"),
                "major_faults": _whole(summary_number(s, "major_faults")),
                "alloc_failures": None if s is None else s["alloc_failures"],
                # shm: pages whose stamps read back wrong (None: not checkable, sim).
                "data_loss_pages": (
                    s["data_loss_pages"] if s is not None and s["data_loss_checked"] else None
                ),
                # The OOM killer's victim may be an earlier guest than the one the run
                # was following (the largest oom_badness): its own summary says so.
                "ending": "killed" if s is not None and s.get("oom_killed") else rec.ending,
                "ended_s": rec.ended_s,
                "host_resident_for_guest_bytes": rec.host_resident_for_guest_bytes,
                "swap_used_after_bytes": rec.swap_used_after_bytes,
                # The victim may be an earlier guest than the one running (the largest
                # oom_badness): its own summary says so.
                "oom_killed": bool(s is not None and s.get("oom_killed")) or rec.ending == "killed",
            }
        )
    return {
        "policy": run.policy,
        "guests_launched": len(out.launches),
        "guests_fit": out.guests_fit,
        "first_swap_guest": out.first_swap_guest,
        "stop_reason": out.stop_reason,
        "swap_used_end_bytes": out.swap_used_end_bytes,
        "swap_used_peak_bytes": max((x.swap_used_bytes for x in out.samples), default=0),
        "host_resident_peak_bytes": max((x.resident_bytes for x in out.samples), default=0),
        "oom_kills": out.oom_kills,
        "elapsed_s": round(run.elapsed, 1),
        "guests": guests,
        "errors": run.errors
        + [
            f"{g['guest']}: {g['data_loss_pages']} pages lost"
            for g in guests
            if g["data_loss_pages"]
        ],
        "host_timeline": [
            {
                "t": x.t,
                "host_resident_bytes": x.resident_bytes,
                "swap_used_bytes": x.swap_used_bytes,
                "oom_kills": x.oom_kills,
            }
            for x in out.samples
        ],
    }


def write_files(out: Path, report: DensityReport) -> dict[str, str]:
    """summary.json, density.csv (a row per guest), density.png (a panel per policy)."""
    files = {"summary": str(out / "summary.json"), "csv": str(out / "density.csv")}
    with (out / "density.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in report["policies"]:
            for g in row["guests"]:
                w.writerow({"policy": row["policy"], **g})
    plot = plot_density(report, out / "density.png")
    if plot is not None:
        files["plot"] = str(plot)
    else:
        from lab.plot import PLOTS_MISSING

        files["plot_skipped"] = PLOTS_MISSING
    write_report(out, {**report, "files": files})
    return files


def plot_density(report: DensityReport, path: Path) -> Path | None:
    """Host resident and swap used over time, launches marked: one panel per policy."""
    rows = report["policies"]
    if not rows or not plots_available():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 3.2 * len(rows)), dpi=100, squeeze=False)
    for ax, row in zip(axes[:, 0], rows, strict=True):
        tl = row.get("host_timeline", [])
        t = [float(x["t"]) for x in tl]
        ax.step(
            t, [x["host_resident_bytes"] / GIB for x in tl], where="post", label="host resident"
        )
        ax.step(t, [x["swap_used_bytes"] / GIB for x in tl], where="post", label="swap used")
        ax.axhline(
            report["host_memory_bytes"] / GIB, color="grey", ls="--", lw=1, label="host memory"
        )
        for g in row["guests"]:
            at = g["launched_s"]
            if isinstance(at, int | float):
                ax.axvline(at, color="grey", ls=":", lw=1)
                ax.text(at, ax.get_ylim()[1] * 0.97, f" {g['guest']}", fontsize=7, va="top")
        ax.set_title(
            f"{row['policy']}: {row['guests_fit']} fit before swap, "
            f"{format_size(row['swap_used_end_bytes'])} swap at the end",
            fontsize=10,
        )
        ax.set_ylabel("GiB")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    axes[-1, 0].set_xlabel("time since the policy's host started (s)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def format_density(r: DensityReport) -> str:
    """The text summary: the setup, a row per policy, then a row per guest."""
    head = (
        f"host {format_size(r['host_memory_bytes'])} + swap {format_size(r['swap_bytes'])}; "
        f"guests {format_size(r['guest_ram_bytes'])} touching {format_size(r['touch_bytes'])}, "
        f"boot footprint {format_size(r['boot_footprint_bytes'])}"
        + (
            ""
            if r["vmm_overhead_bytes"] is None
            else f", VMM {format_size(r['vmm_overhead_bytes'])} each"
        )
        + f" ({r['backend']} backend)"
    )
    policies = render_table(
        ["policy", "launched", "fit before swap", "swap at end", "OOM kills", "stopped by"],
        [
            [
                p["policy"],
                str(p["guests_launched"]),
                str(p["guests_fit"]),
                format_size(p["swap_used_end_bytes"]),
                str(p["oom_kills"]),
                p["stop_reason"],
            ]
            for p in r["policies"]
        ],
    )
    errors = [f"{p['policy']}: {e}" for p in r["policies"] for e in p["errors"]]
    return "\n\n".join(
        [head, policies, _guest_table(r["policies"])]
        + (["errors: " + "; ".join(errors[:5])] if errors else [])
    )


def _guest_table(rows: Sequence[PolicyRow]) -> str:
    def secs(v: object) -> str:
        return f"{v:.1f}" if isinstance(v, int | float) else "—"

    def size(v: object) -> str:
        return format_size(v) if isinstance(v, int | float) else "—"

    return render_table(
        [
            "policy",
            "guest",
            "launched s",
            "swap at launch",
            "touch s",
            "fault wait s",
            "host holds for it",
            "ended",
        ],
        [
            [
                p["policy"],
                str(g["guest"]),
                secs(g["launched_s"]),
                size(g["swap_used_at_launch_bytes"]),
                secs(g["touch_s"]),
                secs(g["fault_wait_s"]),
                size(g["host_resident_for_guest_bytes"]),
                str(g["ending"]) + (" (OOM)" if g["oom_killed"] else ""),
            ]
            for p in rows
            for g in p["guests"]
        ],
    )
