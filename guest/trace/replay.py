"""Replay a kernel page allocator trace against the guest's buddy allocator.

Every allocation takes exactly the block the kernel handed out (the allocator
splits around it), every free frees exactly that block; timing follows the
trace's timestamps scaled by a speed, or runs as fast as it can.

Choices a replay has to make, and the ones made here:

- **Where the trace's pfns go.** ``identity``: guest pfn = trace pfn, so the
  zones (DMA below 16 MiB, DMA32 below 4 GiB) are the traced machine's; the
  guest's RAM must cover the highest pfn. ``compact``: only the 4 MiB blocks
  (order 10) the trace touches, packed in address order; buddies stay buddies,
  the RAM shrinks to what the trace uses, zones are not the machine's.
- **The state before the first event.** A block whose pages are first seen
  being freed was allocated before the trace began: it is allocated at the
  start. Every other page starts free (the trace cannot say what the rest of
  the machine held).
- **What the kernel did that this state cannot.** Counted by kind, never a
  crash: ``alloc_not_free`` (some page of the block is allocated here),
  ``free_not_allocated`` (a free of pages not allocated here), ``outside_ram``,
  ``misaligned`` (a pfn not aligned to its order). A free of pages allocated in
  another shape (a high-order allocation freed page by page after
  split_page()) is done as the kernel did it and counted as ``free_reshaped``.
- **An allocation of a block the hinting worker holds isolated.** The kernel
  would have handed out another page; the trace names this one, so the replay
  waits until the block is put back (counted with the time waited). Only
  after ISOLATED_WAIT_LIMIT is it given up as ``alloc_isolated_timeout``.
"""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass, field
from typing import Any

from guest.mm.constants import ALLOCATED, MAX_ORDER, MIN_RAM, PAGE_SIZE, RAM_ALIGN
from guest.trace.parse import FREE, Trace
from guest.workloads.base import WorkloadContext

MAPPINGS = ("identity", "compact")
TICK_MASK = 63  # events between counting ticks (a power of two, minus one)
ISOLATED_WAIT_LIMIT = 30.0  # seconds an allocation waits for hinting to put a block back
_MAX_BLOCK = 1 << MAX_ORDER


class ReplayError(Exception):
    """A trace that cannot be replayed as asked (e.g. it does not fit the RAM)."""


@dataclass
class ReplayPlan:
    """A trace mapped into guest pfns, with the state before its first event."""

    trace: Trace
    mapping: str
    pfns: array[int]  # mapped
    ram_bytes: int  # what covers the mapped events
    initial: list[tuple[int, int]]  # (pfn, order) allocated before the first event


@dataclass
class ReplayStats:
    events: int = 0
    allocs: int = 0
    frees: int = 0
    inconsistencies: dict[str, int] = field(default_factory=dict)
    isolated_waits: int = 0
    isolated_wait_s: float = 0.0
    seconds: float = 0.0  # wall time of the replay loop
    behind_s: float = 0.0  # at --speed: how far the replay fell behind the trace's clock

    def count(self, kind: str) -> None:
        self.inconsistencies[kind] = self.inconsistencies.get(kind, 0) + 1


def _cover(pages: int) -> int:
    """The smallest valid guest RAM holding ``pages`` pages."""
    size = -(-pages * PAGE_SIZE // RAM_ALIGN) * RAM_ALIGN
    return max(size, MIN_RAM)


def plan_replay(trace: Trace, mapping: str = "identity") -> ReplayPlan:
    if mapping not in MAPPINGS:
        raise ReplayError(f"unknown mapping {mapping!r}: {' | '.join(MAPPINGS)}")
    if not len(trace):
        raise ReplayError(f"{trace.path}: no mm_page_alloc/mm_page_free events to replay")
    if mapping == "identity":
        pfns = trace.pfns
    else:
        blocks = sorted({p >> MAX_ORDER for p in trace.pfns})
        to_guest = {b: i for i, b in enumerate(blocks)}
        low = _MAX_BLOCK - 1
        pfns = array("q", ((to_guest[p >> MAX_ORDER] << MAX_ORDER) | (p & low) for p in trace.pfns))
    ends = max(p + (1 << o) for p, o in zip(pfns, trace.orders, strict=True))
    return ReplayPlan(trace, mapping, pfns, _cover(ends), _initial(trace, pfns))


def _initial(trace: Trace, pfns: array[int]) -> list[tuple[int, int]]:
    """Blocks whose pages are all first seen in a free: allocated before the trace."""
    seen: set[int] = set()
    initial = []
    for kind, pfn, order in zip(trace.kinds, pfns, trace.orders, strict=True):
        if order == 0:
            if pfn not in seen:
                seen.add(pfn)
                if kind == FREE:
                    initial.append((pfn, 0))
            continue
        pages = range(pfn, pfn + (1 << order))
        if kind == FREE and seen.isdisjoint(pages):
            initial.append((pfn, order))
        seen.update(pages)
    return initial


def prepare(plan: ReplayPlan, ctx: WorkloadContext, stats: ReplayStats) -> None:
    """Allocate what was allocated before the first event."""
    alloc_at = ctx.memory.alloc_at
    for pfn, order in plan.initial:
        if pfn & ((1 << order) - 1):
            continue  # counted when its free is replayed
        why = alloc_at(pfn, order)
        if why is not None and why != "outside":
            stats.count(f"initial_{why}")


async def replay(
    plan: ReplayPlan, ctx: WorkloadContext, speed: float | None, stats: ReplayStats
) -> None:
    """Run the events; ``speed`` scales the trace's clock (None: as fast as possible)."""
    memory = ctx.memory
    mm = memory.mm
    pg = mm.pg
    nr_pages = mm.nr_pages
    kinds, pfns, orders, times = plan.trace.kinds, plan.pfns, plan.trace.orders, plan.trace.times
    alloc_at, free, reshape = memory.alloc_at, memory.free, mm.reshape_allocated
    count = stats.count
    ticks = ctx.ticks
    stop = ctx.stop
    t_first = times[0]
    start = time.perf_counter()
    i = 0
    try:
        for i in range(len(kinds)):
            if stop.is_set():
                break
            if speed is not None:
                ahead = (times[i] - t_first) / speed - (time.perf_counter() - start)
                if ahead > 0.002 and not await ctx.sleep(ahead):
                    break
                stats.behind_s = max(stats.behind_s, -ahead)
            pfn = pfns[i]
            order = orders[i]
            if pfn & ((1 << order) - 1):
                count("misaligned")
            elif pfn + (1 << order) > nr_pages:
                count("outside_ram")
            elif kinds[i] == FREE:
                stats.frees += 1
                if pg[pfn] == ALLOCATED | order:
                    free(pfn, order)
                elif reshape(pfn, order) is None:
                    count("free_reshaped")
                    free(pfn, order)
                else:
                    count("free_not_allocated")
            else:
                stats.allocs += 1
                why = alloc_at(pfn, order)
                if why == "isolated":
                    why = await _wait_isolated(ctx, pfn, order, stats)
                if why is not None:
                    count(f"alloc_{why}")
            if not i & TICK_MASK:
                # The loop's share of time, counted a batch at a time (an await per
                # event would cost more than the event).
                await ticks(TICK_MASK + 1)
        else:
            i = len(kinds)
    finally:
        stats.events = i
        stats.seconds = time.perf_counter() - start
        ctx.stats.alloc_ops += stats.allocs
        ctx.stats.free_ops += stats.frees


async def _wait_isolated(
    ctx: WorkloadContext, pfn: int, order: int, stats: ReplayStats
) -> str | None:
    stats.isolated_waits += 1
    t0 = time.perf_counter()
    try:
        while time.perf_counter() - t0 < ISOLATED_WAIT_LIMIT:
            if not await ctx.sleep(0.001):
                return "isolated_stopped"
            why = ctx.memory.alloc_at(pfn, order)
            if why != "isolated":
                return why
        return "isolated_timeout"
    finally:
        stats.isolated_wait_s += time.perf_counter() - t0


def summary(plan: ReplayPlan, stats: ReplayStats, speed: float | None) -> dict[str, Any]:
    t = plan.trace
    rng = t.pfn_range
    return {
        "file": t.path,
        "events": len(t),
        "replayed": stats.events,
        "allocs": stats.allocs,
        "frees": stats.frees,
        "speed": speed,
        "seconds": round(stats.seconds, 3),
        "events_per_s": round(stats.events / stats.seconds) if stats.seconds > 0 else None,
        "trace_seconds": round(t.duration, 6),
        "behind_s": round(stats.behind_s, 3),
        "mapping": plan.mapping,
        "pfn_range": None if rng is None else [hex(rng[0]), hex(rng[1])],
        "initially_allocated_pages": sum(1 << o for _, o in plan.initial),
        "inconsistencies": dict(sorted(stats.inconsistencies.items())),
        "isolated_waits": stats.isolated_waits,
        "isolated_wait_s": round(stats.isolated_wait_s, 3),
        "skipped_events": dict(sorted(t.skipped.items())),
        "failed_allocs_in_trace": t.failed_allocs,
        "lost_events": t.lost_events,
        "batched_duplicates": t.batched_duplicates,
        "malformed_lines": t.malformed,
    }
