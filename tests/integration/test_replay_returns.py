"""A trace recorded on this machine (examples/traces/rounds.trace.gz: two rounds
of a process touching 512 MiB, dropping it, idling 8 s; recorded with the
README's recipe, examples/traces/README.md) replayed at its own speed with the
reporting policy against a real host: with ``--trace-untouched reported`` the
host gets nothing back before the workload's first free (the free memory the
trace never names counts as reported long ago), and after each free it gets
back what the workload freed — all of it but what the kernel's own rules keep
from reporting: the pages waiting on the per-CPU list (the timeline's
``pcp_bytes``) and the freed pages that share a 2 MiB block (the reporting
order) with a page the workload still holds, worked out here from the trace.
(Freed pages that share a block with a page on the per-CPU list are kept too
and are not counted here: the list's pages are the last ones freed, whole
blocks of the buffer, so their blocks' edges are a few pages; the tolerance
covers them.) Held to 2%, tighter than the issue's 5%, so that it tells a replay that
ignores either rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guest.mm import PAGE_SIZE
from guest.mm.constants import PAGEBLOCK_ORDER
from guest.trace.parse import FREE, Trace, parse_trace
from guest.trace.replay import plan_replay
from tests.integration.procs import Procs

TRACE = Path(__file__).resolve().parents[2] / "examples" / "traces" / "rounds.trace.gz"
MIB = 1 << 20


def bursts(t: Trace) -> list[tuple[float, float, int]]:
    """(first, last seconds after the first event, bytes) of each burst of frees
    over 64 MiB: the workload's munmaps."""
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
    return [(b[0], b[1], int(b[2])) for b in out if b[2] >= 64 * MIB]


def kept_by_held_pages(t: Trace, until: float) -> int:
    """Bytes the trace has allocated and freed again by ``until`` (seconds after
    its first event) that share a pageblock with a page still allocated then: the
    kernel reports no block below pageblock order, so the host keeps them."""
    plan = plan_replay(t, "compact")
    held = {pfn for pfn, order in plan.initial for pfn in range(pfn, pfn + (1 << order))}
    touched: set[int] = set()
    t0 = t.times[0]
    for kind, pfn, order, when in zip(t.kinds, plan.pfns, t.orders, t.times, strict=True):
        if when - t0 > until:
            break
        pages = range(pfn, pfn + (1 << order))
        if kind == FREE:
            held.difference_update(pages)
        else:
            held.update(pages)
            touched.update(pages)
    blocks = {pfn >> PAGEBLOCK_ORDER for pfn in held}
    return PAGE_SIZE * sum(1 for p in touched - held if p >> PAGEBLOCK_ORDER in blocks)


def replay(procs: Procs, tmp_path: Path, untouched: str) -> tuple[dict, list[dict]]:  # type: ignore[type-arg]
    """The summary and the timeline's rows, ``t`` counted from the trace's start."""
    addr, _ = procs.host("--backend", "sim")
    tl = tmp_path / f"{untouched}.jsonl"
    s = procs.finish(
        procs.guest(
            "--host", addr, "--trace", str(TRACE), "--trace-map", "compact",
            "--policy", "reporting", "--trace-untouched", untouched,
            "--timeline", str(tl), "--json", "--duration", "40", "--id", untouched,
        ),
        timeout=120,
    )  # fmt: skip
    rows = [json.loads(x) for x in tl.read_text().splitlines()]
    start = next(r["t"] for r in rows if r.get("mark") == "trace-start")
    res = [dict(r, t=r["t"] - start) for r in rows if r["host_resident_bytes"] is not None]
    return s, res


@pytest.mark.slow
def test_each_free_comes_back_and_nothing_before_it(procs: Procs, tmp_path: Path) -> None:
    trace = parse_trace(str(TRACE))
    frees = bursts(trace)
    assert len(frees) == 2 and all(b >= 500 * MIB for *_, b in frees), frees
    s, rows = replay(procs, tmp_path, "reported")
    assert s["trace"]["block_fill"] > 0.5  # a recording the README's recipe makes
    assert s["trace"]["untouched_reported_pages"] > 0
    peak = 0
    for r in rows:
        if r["t"] < frees[0][0]:
            peak = max(peak, r["host_resident_bytes"])
            assert peak - r["host_resident_bytes"] < 0.05 * frees[0][2], ("returned early", r)
    for i, (first, last, freed) in enumerate(frees):
        before = max(r["host_resident_bytes"] for r in rows if r["t"] <= first)
        # The idle time after the free, up to the next round's first allocations.
        idle = [r for r in rows if last < r["t"] < (frees[i + 1][0] if i + 1 < len(frees) else 1e9)]
        floor = min(r["allocated_bytes"] for r in idle)
        idle = [r for r in idle if r["allocated_bytes"] < floor + 16 * MIB]
        after = min(idle, key=lambda r: r["host_resident_bytes"])
        returned = before - after["host_resident_bytes"]
        kept = after["pcp_bytes"] + kept_by_held_pages(trace, after["t"])
        print(f"free {i}: returned {returned >> 20} MiB of {freed >> 20}; kept "
              f"{kept >> 20} MiB ({after['pcp_bytes'] >> 20} MiB on the per-CPU list)")  # fmt: skip
        # The issue asks for 5%; runs land within 3 MiB (0.6%), and 2% still tells
        # a replay that ignored either rule (each moves the first free by over 2%).
        assert abs(returned - (freed - kept)) <= 0.02 * freed, (i, returned >> 20, kept >> 20)
