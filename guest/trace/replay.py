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
- **An allocation of a block the hinting worker holds isolated.** In the kernel
  that cannot happen: page_reporting_cycle() takes the block off the free list
  (__isolate_free_page), so the allocator hands out another one. The replay
  does the same: it allocates a substitute block of that order, counts it
  (``substituted``), and the trace's later free of that pfn frees the
  substitute.
- **The level the events come from.** mm_page_alloc/mm_page_free fire at the
  allocator's API, before a free reaches a per-CPU list; the replay frees
  through the guest's own per-CPU lists (guest/mm/pcp.py) as the kernel would,
  so a freed page reaches the buddy (and can merge, and be reported) only when
  its list drains (``--pcp off``: straight into the buddy).
- **How much of each block the trace fills.** ``block_fill`` is the share of
  the pages of the 4 MiB blocks the trace touches that it names. Where it is
  low the traced machine had most of the rest of those blocks in use: an
  order-0 allocation reuses its CPU's recently freed pages, then refills a
  batch from the smallest free blocks of its migratetype (__rmqueue_smallest),
  and two free blocks in the buddy lists below pageblock order are never
  buddies (they would have merged) — so a small free block's neighbours were
  allocated, or on a per-CPU list. Yet ``--trace-untouched reported`` (or
  ``free``) counts that memory free, so frees merge with neighbours the traced
  machine never had free. The guest warns below ``LOW_FILL``.
"""

from __future__ import annotations

import functools
import math
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

from guest.mm.constants import ALLOCATED, MAX_ORDER, MIN_RAM, PAGE_SIZE, RAM_ALIGN
from guest.mm.exact import containing_block
from guest.trace.parse import FREE, Trace
from guest.workloads.base import WorkloadContext
from pagehint.config import TRACE_MAPPINGS
from pagehint.schema import TraceSummary

TICK_MASK = 63  # events between counting ticks (a power of two, minus one)
# Below this block_fill a replay that counts untouched pages free warns: more
# of each block is the traced machine's other memory than the trace's own.
LOW_FILL = 0.5
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

    @functools.cached_property
    def block_fill(self) -> float:
        """Pages named / pages of the 4 MiB blocks touched. Worked out when first
        asked, after the command has refused a trace too large for any guest (whose
        blocks could be millions)."""
        return _block_fill(self.pfns, self.trace.orders)


@dataclass
class ReplayStats:
    events: int = 0
    allocs: int = 0
    frees: int = 0
    inconsistencies: dict[str, int] = field(default_factory=dict)
    substituted: int = 0  # allocations of a block under report, given another block
    initial_pages: int = 0  # allocated before the first event (inside RAM)
    untouched_allocated_pages: int = 0  # --trace-untouched allocated
    untouched_reported_pages: int = 0  # --trace-untouched reported
    seconds: float = 0.0  # wall time of the replay loop
    behind_s: float = 0.0  # at --speed: how far the replay fell behind the trace's clock

    def count(self, kind: str) -> None:
        self.inconsistencies[kind] = self.inconsistencies.get(kind, 0) + 1


def _cover(pages: int) -> int:
    """The smallest valid guest RAM holding ``pages`` pages."""
    size = -(-pages * PAGE_SIZE // RAM_ALIGN) * RAM_ALIGN
    return max(size, MIN_RAM)


def plan_replay(trace: Trace, mapping: str = "identity") -> ReplayPlan:
    if mapping not in TRACE_MAPPINGS:
        raise ReplayError(f"unknown mapping {mapping!r}: {' | '.join(TRACE_MAPPINGS)}")
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


def fill_text(fill: float) -> str:
    """``block_fill`` as a share a reader can compare with LOW_FILL: one decimal,
    rounded down (49.95% is under half), and never 0% for a trace that names a page."""
    if 0 < fill < 0.001:
        return "<0.1%"
    return f"{math.floor(fill * 1000 + 1e-9) / 10:.1f}%"


def fill_warning(fill: float) -> str:
    """What a user replaying with the untouched pages free (--trace-untouched
    reported or free) should know when the trace fills little of its blocks
    (empty: nothing to say)."""
    if fill >= LOW_FILL:
        return ""
    return (
        f"the trace names {fill_text(fill)} of the pages of the 4 MiB blocks it touches: "
        "the rest was the traced machine's other memory, which --trace-untouched "
        "reported or free counts free, so frees merge with memory that machine had in "
        "use (--trace-untouched allocated holds it; see examples/traces/README.md)"
    )


def _block_fill(pfns: array[int], orders: Sequence[int]) -> float:
    """The share of the pages of the order-10 blocks the events touch that they
    name. Per touched block, not per page of RAM: an identity trace may name a
    pfn far beyond any RAM (refused later, with a reason)."""
    blocks: dict[int, bytearray] = {}
    for pfn, order in zip(pfns, orders, strict=True):
        block = blocks.get(pfn >> MAX_ORDER)
        if block is None:
            block = blocks[pfn >> MAX_ORDER] = bytearray(_MAX_BLOCK)
        start = pfn & (_MAX_BLOCK - 1)
        n = min(1 << order, _MAX_BLOCK - start)  # a misaligned event stays in its block
        block[start : start + n] = b"\x01" * n
    named = sum(b.count(1) for b in blocks.values())
    return named / (len(blocks) * _MAX_BLOCK) if blocks else 0.0


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


def prepare(
    plan: ReplayPlan, ctx: WorkloadContext, stats: ReplayStats, untouched: str = "reported"
) -> None:
    """Allocate what was allocated before the first event. The pages the trace
    never names (the traced machine's other memory): ``reported`` marks them
    reported, as on a guest that has been up (only what the trace frees is then
    reported); ``allocated`` holds them (nothing else can be); ``free`` leaves
    them free and unreported, as just after boot."""
    alloc_at = ctx.memory.alloc_at
    for pfn, order in plan.initial:
        if pfn & ((1 << order) - 1):
            continue  # counted when its free is replayed
        why = alloc_at(pfn, order)
        if why is None:
            stats.initial_pages += 1 << order
        elif why != "outside":
            stats.count(f"initial_{why}")
    if untouched == "allocated":
        stats.untouched_allocated_pages = _allocate_untouched(plan, ctx)
    elif untouched == "reported":
        stats.untouched_reported_pages = _report_untouched(ctx)


def _touched_pages(pfns: array[int], orders: Sequence[int], nr_pages: int) -> bytearray:
    """A byte per guest page: 1 where some event of the trace names it."""
    touched = bytearray(nr_pages)
    for pfn, order in zip(pfns, orders, strict=True):
        end = min(pfn + (1 << order), nr_pages)
        if pfn < end:
            touched[pfn:end] = b"\x01" * (end - pfn)
    return touched


def _report_untouched(ctx: WorkloadContext) -> int:
    """Mark reported (PageReported) every block free at the start: on a guest that
    has been up, free page reporting handed its free memory back long ago and the
    host holds none of it — the pages the trace never names, and those it has yet
    to allocate. (A later allocation splits such a block; its other halves are
    unreported again and get reported again, as in the kernel: expand() gives
    them no PageReported.) Returns the pages marked."""
    mm = ctx.memory.mm
    pages = 0
    for zone in mm.zones:
        for area in zone.free_area:
            for pfn in list(area):
                if mm.mark_reported(pfn, area.order):
                    pages += 1 << area.order
    return pages


def _allocate_untouched(plan: ReplayPlan, ctx: WorkloadContext) -> int:
    mm = ctx.memory.mm
    touched = _touched_pages(plan.pfns, plan.trace.orders, mm.nr_pages)
    alloc_at = ctx.memory.alloc_at
    pages = 0
    for block in range(0, mm.nr_pages, _MAX_BLOCK):
        if touched.find(1, block, block + _MAX_BLOCK) < 0:
            if alloc_at(block, MAX_ORDER) is None:
                pages += _MAX_BLOCK
            continue
        for pfn in range(block, block + _MAX_BLOCK):
            if not touched[pfn] and alloc_at(pfn, 0) is None:
                pages += 1
    return pages


class _OddEvents:
    """The events that are not a plain free of an allocated block or a plain
    allocation of a free one: substitutes, stand-ins, reshapes, inconsistencies."""

    def __init__(self, ctx: WorkloadContext, stats: ReplayStats) -> None:
        self.memory = ctx.memory
        self.stats = stats
        self.substitutes: dict[int, tuple[int, int]] = {}  # trace pfn -> (stand-in, order)
        self.stand_ins: set[int] = set()  # their heads: the trace never allocated these

    def free(self, pfn: int, order: int) -> None:
        memory, count = self.memory, self.stats.count
        if pfn in self.substitutes:
            sub, sub_order = self.substitutes.pop(pfn)
            self.stand_ins.discard(sub)
            memory.free(sub, sub_order)
            if sub_order != order:
                count("free_not_allocated")
        elif self.stand_ins and containing_block(memory.mm, pfn)[0] in self.stand_ins:
            count("free_not_allocated")  # a stand-in: not the trace's to free
        elif memory.mm.pg[pfn] == ALLOCATED | order:
            memory.free(pfn, order)
        elif memory.reshape(pfn, order) is None:
            count("free_reshaped")
            memory.free(pfn, order)
        else:
            count("free_not_allocated")

    def alloc(self, pfn: int, order: int, why: str) -> None:
        """An allocation alloc_at refused for ``why``."""
        if why == "isolated":
            # The kernel's allocator would have taken another block.
            sub = self.memory.alloc(order)
            if sub < 0:
                why = "isolated_no_memory"
            elif pfn in self.substitutes:  # allocated twice without a free
                why = "not_free"
                self.memory.free(sub, order)
            else:
                self.substitutes[pfn] = (sub, order)
                self.stand_ins.add(sub)
                self.stats.substituted += 1
                return
        self.stats.count(f"alloc_{why}")


async def replay(
    plan: ReplayPlan, ctx: WorkloadContext, speed: float | None, stats: ReplayStats
) -> None:
    """Run the events; ``speed`` scales the trace's clock (None: as fast as possible)."""
    memory = ctx.memory
    pg, nr_pages = memory.mm.pg, memory.mm.nr_pages
    kinds, pfns, orders, times = plan.trace.kinds, plan.pfns, plan.trace.orders, plan.trace.times
    alloc_at, free = memory.alloc_at, memory.free
    odd = _OddEvents(ctx, stats)
    count, ticks, stop = stats.count, ctx.ticks, ctx.stop
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
                # The plain case inline (it is nearly every event); the rest apart.
                if not odd.substitutes and pg[pfn] == ALLOCATED | order:
                    free(pfn, order)
                else:
                    odd.free(pfn, order)
            else:
                stats.allocs += 1
                why = alloc_at(pfn, order)
                if why is not None:
                    odd.alloc(pfn, order, why)
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


def summary(plan: ReplayPlan, stats: ReplayStats, speed: float | None) -> TraceSummary:
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
        "initially_allocated_pages": stats.initial_pages,
        "inconsistencies": dict(sorted(stats.inconsistencies.items())),
        "substituted": stats.substituted,
        "untouched_allocated_pages": stats.untouched_allocated_pages,
        "untouched_reported_pages": stats.untouched_reported_pages,
        "block_fill": round(plan.block_fill, 4),
        "seconds_clock": t.seconds_clock,
        "batched_only": t.batched_only,
        "lost_markers": t.lost_markers,
        "skipped_events": dict(sorted(t.skipped.items())),
        "failed_allocs_in_trace": t.failed_allocs,
        "lost_events": t.lost_events,
        "batched_duplicates": t.batched_duplicates,
        "malformed_lines": t.malformed,
    }
