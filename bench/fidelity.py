"""pagehint's reporting policy held to the real kernel's: the same workload, the
same four figures.

The kernel's side is recorded by bench/reference/linux/record.py (Debian 12's
6.1 kernel in a 2 GiB, 2-vCPU QEMU guest with free page reporting; the
recordings are committed beside it). pagehint's side runs the same history —
the balloon registered, 256 MiB touched (as THPs, order 9, or as order-0
pages), held, freed at the same time after the registration, then idle, at the
order the kernel reported at —
as a real host and guest process pair, and reads the host's residency from the
guest's timeline. From each side's residency over time from the start of the
free (both sides begin it at the same instant after registration; how long the
free itself takes is each guest's own speed — TCG's munmap of 65,536 pages, or
pagehint's loop on either backend — and measured from its end, that would pass
for a difference in reporting):

- returned: MiB the host stopped holding (resident at the free minus the least
  in the window);
- first return: seconds from the start of the free to the first drop;
- to 90%: seconds from the start of the free until 90% of ``returned`` was back;
- per pass: drops closer than 0.5 s to each other are one reporting pass; the
  mean MiB of a pass, and the seconds between pass starts.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REFERENCE_DIR = Path(__file__).resolve().parent / "reference" / "linux"
# The recorded histories, by the pages the workload touched and freed: "thp",
# order-9 THPs, and "small", order-0 pages, both reported at the kernel's default
# order (9); "order0", order-0 pages reported at order 0 (set after registration).
MODES = ("thp", "small", "order0")
WORKLOAD_ORDER = {"thp": 9, "small": 0, "order0": 0}
WINDOW_S = 10.0  # after the free: the kernel's guest idles 25 s, its reports end in 4
PASS_GAP_S = 0.5  # drops further apart than this are separate passes (the delay is 2 s)
DROP_BYTES = 256 << 10  # a residency fall smaller than this is noise, not a report
MIB = 1 << 20


@dataclass(frozen=True)
class Figures:
    returned_mib: float
    first_return_s: float | None
    t90_s: float | None
    passes: tuple[tuple[float, float], ...]  # (start s after the free, MiB)

    @property
    def mib_per_pass(self) -> float:
        return statistics.fmean(m for _, m in self.passes) if self.passes else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "returned_mib": round(self.returned_mib, 1),
            "first_return_s": self.first_return_s,
            "t90_s": self.t90_s,
            "mib_per_pass": round(self.mib_per_pass, 1),
            "passes": len(self.passes),
        }


def figures(
    samples: Sequence[tuple[float, int]], freeing: float, window: float = WINDOW_S
) -> Figures:
    """The four figures from (seconds, resident bytes) samples around a free that
    began at ``freeing``."""
    before = [b for t, b in samples if t <= freeing]
    if not before:
        raise ValueError("no residency sample before the free")
    base = before[-1]
    after = [(t - freeing, b) for t, b in samples if freeing < t <= freeing + window]
    if not after:
        raise ValueError("no residency sample after the free")
    low = min(b for _, b in after)
    returned = max(0, base - low)
    drops: list[tuple[float, int]] = []
    prev = base
    t90 = None
    for t, b in after:
        if b < prev - DROP_BYTES:
            drops.append((t, prev - b))
        if t90 is None and returned and base - b >= 0.9 * returned:
            t90 = round(t, 2)
        prev = min(prev, b) if b < prev - DROP_BYTES else prev
    passes: list[list[float]] = []
    for t, d in drops:
        if passes and t - passes[-1][1] < PASS_GAP_S:
            passes[-1][1] = t
            passes[-1][2] += d / MIB
        else:
            passes.append([t, t, d / MIB])
    return Figures(
        returned / MIB,
        round(drops[0][0], 2) if drops else None,
        t90,
        tuple((round(p[0], 2), round(p[2], 1)) for p in passes),
    )


def reference_files(mode: str) -> list[Path]:
    return sorted(REFERENCE_DIR.glob(f"{mode}-*.json"))


def kernel_run(path: Path) -> tuple[Figures, dict[str, Any]]:
    """The figures of one recording, and the recording (less its samples)."""
    rec = json.loads(path.read_text())
    marks = rec["marks"]
    end = marks.get("done", marks["freeing"] + WINDOW_S)
    fig = figures(rec["samples"], marks["freeing"], min(WINDOW_S, end - marks["freeing"]))
    rec.pop("samples")
    return fig, rec


def reporting_order(rec: dict[str, Any]) -> int:
    """The order the recorded kernel reported at: what its sysfs said after the
    driver registered (``proc.reporting_order``). Linux 6.1's
    page_reporting_register() sets the order to pageblock_order whatever the
    command line asked, so the first "order 0" recordings ran at 9; the
    recording's own field said what was asked until record.py read it back."""
    said = rec.get("proc", {}).get("reporting_order")
    return int(str(said).strip()) if said is not None else int(rec["reporting_order"])


def kernel_address(rec: dict[str, Any]) -> int | None:
    """Where the recorded boot's KASLR put the kernel (bytes): the start of
    "Kernel code" in its /proc/iomem; None when the recording has no iomem. The
    boot's written-and-freed memory lies after it (guest/mm/layout.py), and the
    pass whose walk reaches it returns it."""
    for line in str(rec.get("proc", {}).get("iomem", "")).splitlines():
        if line.strip().endswith(": Kernel code"):
            return int(line.strip().split("-", 1)[0], 16)
    return None


@dataclass(frozen=True)
class Schedule:
    """When the recorded workload started and began to free, in seconds after the
    balloon registered."""

    start_s: float
    freeing_s: float


def schedule(rec: dict[str, Any]) -> Schedule:
    """The recording's schedule. pagehint's guest keeps the same one after its own
    registration (the scenario starts there): its allocations take a fraction of
    the TCG guest's page faults, so it waits until the recorded free instead of
    holding for as long after it finished allocating — the free falls at the same
    point of the 2 s reporting cycle, which runs from the registration in both."""
    marks = rec["marks"]
    reg = marks["registered"]
    return Schedule(float(marks["start"] - reg), float(marks["freeing"] - reg))


def scenario(mode: str, when: Schedule, region_mib: int = 256) -> str:
    """The recorded guest's history as a pagehint scenario."""
    order = WORKLOAD_ORDER[mode]
    return f"""name = "kernel-fidelity-{mode}"
[[steps]]
op = "sleep"
until = {when.start_s:.3f}
[[steps]]
op = "alloc"
name = "region"
size = "{region_mib}MiB"
order = {order}
[[steps]]
op = "mark"
label = "touched"
[[steps]]
op = "sleep"
until = {when.freeing_s:.3f}
[[steps]]
op = "mark"
label = "freeing"
[[steps]]
op = "free"
name = "region"
[[steps]]
op = "mark"
label = "freed"
[[steps]]
op = "sleep"
seconds = {WINDOW_S + 1}
"""


def pagehint_run(
    mode: str, backend: str, rec: dict[str, Any], workdir: Path | None = None
) -> Figures:
    """Run the recording's history on a real host and guest process pair, at the
    order the recorded kernel reported at; its figures."""
    from lab.procs import ProcessGroup

    with tempfile.TemporaryDirectory() as tmp:
        work = workdir or Path(tmp)
        group = ProcessGroup(work)
        try:
            # The stream on the host's Unix socket: the faster of pagehint's two
            # transports (bench_roundtrip), so the device's answer stretches a pass
            # the least (QEMU's, from a ring in shared memory, is faster still).
            # In ``tmp``: a workdir may be too long for a socket's path.
            sock = str(Path(tmp) / "q.sock")
            addr, _ = group.start_host(["--backend", backend, "--queue-socket", sock])
            scen = work / f"{mode}.toml"
            scen.write_text(scenario(mode, schedule(rec)))
            tl = work / f"{mode}-{backend}.jsonl"
            args = [
                "--host", addr, "--queue-socket", sock,
                "--ram", "2GiB", "--cpus", "2", "--policy", "reporting",
                "--reporting-order", str(reporting_order(rec)),
                "--scenario", str(scen), "--timeline", str(tl), "--quiet",
            ]  # fmt: skip
            kernel_at = kernel_address(rec)
            if kernel_at is not None:
                args += ["--kernel-at", str(kernel_at)]
            guest = group.start_guest(args, name=f"guest-{mode}-{backend}")
            guest.communicate(timeout=120)
            if guest.returncode != 0:
                log = group.log_text(f"guest-{mode}-{backend}").strip().splitlines()
                raise RuntimeError(f"guest exited {guest.returncode}: {log[-1:] or ''}")
            rows = [json.loads(x) for x in tl.read_text().splitlines() if x.strip()]
        finally:
            group.close()
    freeing = next(r["t"] for r in rows if r.get("mark") == "freeing")
    samples = [
        (r["t"], r["host_resident_bytes"]) for r in rows if r["host_resident_bytes"] is not None
    ]
    return figures(samples, freeing)
