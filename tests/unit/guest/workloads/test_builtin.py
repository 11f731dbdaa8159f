from __future__ import annotations

import asyncio

from guest.memory import GuestMemory
from guest.mm import BuddyAllocator
from guest.mm.check import check_invariants
from guest.mm.procfs import buddyinfo
from guest.workloads.base import WorkloadContext
from guest.workloads.builtin import WorkloadParams, churn, fragment, memhog
from pagehint.config import BARE_MEMORY
from tests.waiting import wait_for


async def _run_for(coro_fn, ctx: WorkloadContext, seconds: float) -> None:  # type: ignore[no-untyped-def]
    task = asyncio.create_task(coro_fn)
    await asyncio.sleep(seconds)
    ctx.stop.set()
    await asyncio.wait_for(task, 5)


async def test_memhog_allocates_then_frees() -> None:
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    ctx = WorkloadContext(GuestMemory(mm))
    p = WorkloadParams(hog_fraction=0.25, hold_seconds=0.2, idle_seconds=10)
    task = asyncio.create_task(memhog(ctx, p))
    for _ in range(200):
        if mm.allocated_pages == 4096:
            break
        await asyncio.sleep(0.01)
    assert mm.allocated_pages == 4096
    for _ in range(200):
        if mm.allocated_pages == 0:
            break
        await asyncio.sleep(0.01)
    assert mm.allocated_pages == 0
    ctx.stop.set()
    await asyncio.wait_for(task, 5)
    assert [label for _, label in ctx.stats.marks] == ["alloc-0", "free-0"]


async def test_churn_hovers_around_occupancy() -> None:
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    ctx = WorkloadContext(GuestMemory(mm), seed=3)
    p = WorkloadParams(occupancy=0.3, ops_per_second=200_000)
    await _run_for(churn(ctx, p), ctx, 0.6)
    occ = mm.allocated_pages / mm.nr_pages
    assert 0.15 < occ < 0.45, occ
    assert ctx.stats.alloc_ops > 1000 and ctx.stats.free_ops > 100
    check_invariants(mm)


async def test_fragment_leaves_only_order0_holes() -> None:
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    ctx = WorkloadContext(GuestMemory(mm))
    # everything allocated page by page, every other page freed: nothing merges
    # (waited for, not timed: a loaded CI machine once took over 0.5 s)
    task = asyncio.create_task(fragment(ctx, WorkloadParams(hog_fraction=1.0)))
    await wait_for(lambda: ctx.stats.free_ops == mm.nr_pages // 2, 30, "every other page freed")
    ctx.stop.set()
    await asyncio.wait_for(task, 5)
    info = buddyinfo(mm)
    assert sum(c[0] for c in info.values()) == mm.nr_pages // 2
    assert all(sum(c[1:]) == 0 for c in info.values())
    check_invariants(mm)
