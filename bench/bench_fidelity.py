"""pagehint's reporting policy against the real kernel's, figure by figure.

For each mode (``thp``: 256 MiB of THPs; ``small``: 256 MiB of order-0 pages,
both at the kernel's default reporting order, 9; ``order0``: order-0 pages at
reporting order 0) and each recording of the real kernel in
bench/reference/linux/ (Debian 12's 6.1 under QEMU, recorded on this machine),
runs the same history through a real pagehint host and guest on each backend,
on that recording's schedule after the balloon's registration and at the order
its kernel reported at, and prints the four figures side by side: min–max over
the runs, the verdict of the 5% goal (pagehint's range against the
kernel's, widened by 5% of the kernel's median), and how far the kernel's own
runs land from each other (each over each other).

    .venv/bin/python -m bench.bench_fidelity [--backends sim,shm] [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from collections.abc import Sequence

from bench.fidelity import (
    MODES,
    Figures,
    kernel_run,
    pagehint_run,
    reference_files,
)
from bench.goals import Goal

GOAL = 0.05
FIELDS = ("returned_mib", "first_return_s", "t90_s", "mib_per_pass")


def span(values: Sequence[float | None]) -> tuple[float, float] | None:
    xs = [v for v in values if v is not None]
    return (min(xs), max(xs)) if xs else None


def verdict(kernel: Sequence[float | None], ours: Sequence[float | None]) -> str:
    """Within the goal when every run of ours lies in the kernel's range, widened
    by 5% of the kernel's median on each side."""
    k = [v for v in kernel if v is not None]
    o = [v for v in ours if v is not None]
    if not k or not o:
        return "n/a"
    slack = GOAL * statistics.median(k)
    lo, hi = min(k) - slack, max(k) + slack
    return "within 5%" if all(lo <= v <= hi for v in o) else "outside 5%"


def self_spread(values: Sequence[float | None]) -> tuple[float, float] | None:
    """The kernel's runs over each other (every ordered pair): how far apart the
    real thing's own runs land, beside which a per-run 5% is to be read."""
    xs = [v for v in values if v]
    ratios = [a / b for a, b in itertools.permutations(xs, 2)]
    return (round(min(ratios), 3), round(max(ratios), 3)) if ratios else None


def run(backends: Sequence[str]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for mode in MODES:
        kernel: list[Figures] = []
        ours: dict[str, list[Figures]] = {b: [] for b in backends}
        for path in reference_files(mode):
            fig, rec = kernel_run(path)
            kernel.append(fig)
            for backend in backends:
                ours[backend].append(pagehint_run(mode, backend, rec))
        row: dict[str, object] = {"runs": len(kernel)}
        for field in FIELDS:
            kv = [getattr(f, field) for f in kernel]
            row[f"kernel_{field}"] = span(kv)
            row[f"kernel_{field}_runs"] = kv
            row[f"kernel_{field}_self"] = self_spread(kv)
            for backend in backends:
                ov = [getattr(f, field) for f in ours[backend]]
                row[f"{backend}_{field}"] = span(ov)
                row[f"{backend}_{field}_runs"] = ov
                row[f"{backend}_{field}_verdict"] = verdict(kv, ov)
        out[mode] = row
    return out


def show(results: dict[str, dict[str, object]], backends: Sequence[str]) -> str:
    def fmt(v: object) -> str:
        if not isinstance(v, (tuple, list)):  # a span; a list once read back from JSON
            return "-"
        lo, hi = v
        return f"{lo:.2f}" if lo == hi else f"{lo:.2f}–{hi:.2f}"

    lines = []
    for mode, row in results.items():
        lines.append(f"{mode} ({row['runs']} recordings of the kernel; one pagehint run each)")
        for field in FIELDS:
            parts = [f"  {field:15s} kernel {fmt(row[f'kernel_{field}']):>13s}"]
            for b in backends:
                parts.append(f"{b} {fmt(row[f'{b}_{field}']):>13s} ({row[f'{b}_{field}_verdict']})")
            parts.append(f"kernel run over kernel run {fmt(row.get(f'kernel_{field}_self'))}")
            lines.append("   ".join(parts))
    return "\n".join(lines)


BACKENDS = ("sim", "shm")


def main() -> dict[str, dict[str, object]]:
    """``make bench``: every recording, both backends."""
    return run(BACKENDS)


def goals(r: dict[str, dict[str, object]]) -> list[Goal]:
    """Each pagehint run over the recording it was paired with (the free at the
    same time after registration, so at the same phase of the 2 s cycle): within 5%."""
    out = []
    for mode, row in r.items():
        for field in FIELDS:
            kv: list[float | None] = row[f"kernel_{field}_runs"]  # type: ignore[assignment]
            for b in BACKENDS:
                ov: list[float | None] = row[f"{b}_{field}_runs"]  # type: ignore[assignment]
                # A run that never returned (None) fails the band: inf, not skipped.
                ratios = tuple(
                    float("inf") if o is None else round(o / k, 3)
                    for o, k in zip(ov, kv, strict=True)
                    if k
                )
                out.append(
                    Goal(
                        f"fidelity, {mode}, {field}, {b}, each run over its recording",
                        ratios,
                        GOAL,
                        band=True,
                    )
                )
    return out


def table(r: dict[str, dict[str, object]]) -> str:
    return "```\n" + show(r, BACKENDS) + "\n```\n"


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="sim,shm")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    backends = [b for b in a.backends.split(",") if b]
    results = run(backends)
    print(show(results, backends))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    cli()
