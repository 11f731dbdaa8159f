"""Helpers for benchmarks: interleaved rounds so noise hits both sides alike, and the
figures that say how much to trust a run (CPU time, the machine's steal time)."""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from lab.procs import cpu_seconds

T = TypeVar("T")


def interleave(cases: dict[str, Callable[[], T]], rounds: int) -> dict[str, list[T]]:
    """Run each case once per round, in alternating order; return per-case samples."""
    out: dict[str, list[T]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(rounds):
        order = names if r % 2 == 0 else list(reversed(names))
        for name in order:
            out[name].append(cases[name]())
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of another (live) process."""
    cpu = cpu_seconds(pid)
    if cpu is None:
        raise RuntimeError(f"process {pid} is gone")
    return cpu


def _cpu_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    steal = parts[7] if len(parts) > 7 else 0
    # guest and guest_nice are already counted in user and nice.
    return steal, sum(parts[:8])


@dataclass
class Machine:
    """Steal time over a stretch of a run: CPU the hypervisor gave to others."""

    steal0: int = 0
    total0: int = 0
    wall0: float = 0.0

    @classmethod
    def start(cls) -> Machine:
        steal, total = _cpu_ticks()
        return cls(steal, total, time.monotonic())

    def report(self) -> dict[str, float]:
        steal, total = _cpu_ticks()
        dt = max(1, total - self.total0)
        return {
            "steal_pct": round(100 * (steal - self.steal0) / dt, 2),
            "wall_s": round(time.monotonic() - self.wall0, 1),
            "cpus": float(os.cpu_count() or 1),
        }


def on_shm_host(
    measure: Callable[[str, str], Coroutine[Any, Any, T]],
) -> T:
    """Run ``measure(address, queue_socket)`` on uvloop against a real ``pagehint
    host --backend shm --queue-socket`` started for it (and stopped after)."""
    import tempfile
    from pathlib import Path

    import uvloop

    from lab.procs import ProcessGroup

    with tempfile.TemporaryDirectory() as tmp:
        group = ProcessGroup(Path(tmp))
        sock = str(Path(tmp) / "queue.sock")
        try:
            addr, _host = group.start_host(["--quiet", "--backend", "shm", "--queue-socket", sock])
            return uvloop.run(measure(addr, sock))
        finally:
            group.close()
