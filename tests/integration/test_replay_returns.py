"""A trace recorded on this machine (examples/traces/rounds.trace.gz: two rounds
of a process touching 512 MiB, dropping it, idling 4 s; recorded with the
README's recipe, examples/traces/record.sh) replayed at its own speed with the
reporting policy against a real host: with ``--trace-untouched reported`` the
host gets nothing back before the workload's first free (the free memory the
trace never names counts as reported long ago), and memory back after each
free. Not held here, measured (closing note of issue 26): each 512 MiB comes
back over 2-4 passes, not within 5% in one, because the passes' budgets go
first to the remnants of reported blocks that the trace's allocations split
(as the kernel's expand() leaves them unreported); ~20% stays with the host,
in 2 MiB blocks that a page still allocated keeps below the reporting order,
and on the per-CPU list. (Started ``free`` instead, the first free came back
about as fast (169 MiB in its window against 158): in this trace the remnants,
not the never-touched memory, hold the passes up.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guest.mm import PAGE_SIZE, BuddyAllocator
from guest.trace.parse import FREE, parse_trace
from pagehint.config import MemoryConfig
from tests.integration.procs import Procs

TRACE = Path(__file__).resolve().parents[2] / "examples" / "traces" / "rounds.trace.gz"
MIB = 1 << 20


def bursts(path: Path) -> list[tuple[float, int]]:
    """(seconds after the first event, bytes) of each burst of frees over 64 MiB:
    the workload's munmaps."""
    t = parse_trace(str(path))
    t0 = t.times[0]
    out: list[list[float]] = []
    for kind, order, when in zip(t.kinds, t.orders, t.times, strict=True):
        if kind != FREE:
            continue
        if out and when - t0 - out[-1][1] < 0.5:
            out[-1][1] = when - t0
            out[-1][2] += PAGE_SIZE << order
        else:
            out.append([when - t0, when - t0, PAGE_SIZE << order])
    return [(b[1], int(b[2])) for b in out if b[2] >= 64 * MIB]


def replay(procs: Procs, tmp_path: Path, untouched: str) -> tuple[dict, list[tuple[float, int]]]:  # type: ignore[type-arg]
    """The summary and (seconds after the trace's start, host residency)."""
    addr, _ = procs.host("--backend", "sim")
    tl = tmp_path / f"{untouched}.jsonl"
    s = procs.finish(
        procs.guest(
            "--host", addr, "--trace", str(TRACE), "--trace-map", "compact",
            "--policy", "reporting", "--trace-untouched", untouched,
            "--timeline", str(tl), "--json", "--duration", "30", "--id", untouched,
        ),
        timeout=120,
    )  # fmt: skip
    rows = [json.loads(x) for x in tl.read_text().splitlines()]
    start = next(r["t"] for r in rows if r.get("mark") == "trace-start")
    res = [(r["t"] - start, r["host_resident_bytes"]) for r in rows if r["host_resident_bytes"]]
    return s, res


@pytest.mark.slow
def test_each_free_comes_back_and_nothing_before_it(procs: Procs, tmp_path: Path) -> None:
    frees = bursts(TRACE)
    assert len(frees) == 2 and all(b >= 500 * MIB for _, b in frees), frees
    s, res = replay(procs, tmp_path, "reported")
    # The per-CPU list keeps at most its high mark: the zone's low watermark over 2 CPUs.
    mm = BuddyAllocator(s["ram_bytes"], model=MemoryConfig(layout="none"))
    kept = max(z.pcp.high for z in mm.zones) * PAGE_SIZE
    peak = 0
    for t, b in res:
        if t < frees[0][0]:
            peak = max(peak, b)
            assert peak - b < 0.05 * frees[0][1], ("returned before the free", t, peak - b)
    for i, (t_free, _freed) in enumerate(frees):
        before = max(b for t, b in res if t <= t_free)
        window_end = frees[i + 1][0] if i + 1 < len(frees) else res[-1][0] + 1
        after = min(b for t, b in res if t_free < t < window_end)
        assert before - after >= 64 * MIB, (i, (before - after) >> 20)
    total_freed = sum(b for _, b in frees)
    assert max(b for _, b in res) - res[-1][1] <= total_freed + kept
