"""LoopShare: busy workloads on a shared loop leave every window's rest to the others."""

from __future__ import annotations

import asyncio
import time

from guest.memory import GuestMemory
from guest.mm import BuddyAllocator
from guest.workloads import share
from guest.workloads.base import WorkloadContext


async def _probe_wait(burners: int, loop_share: share.LoopShare | None) -> float:
    """Worst delay of a 1 ms timer while ``burners`` workloads allocate flat out."""
    share.shared = loop_share
    stop = asyncio.Event()

    async def burn(seed: int) -> None:
        ctx = WorkloadContext(GuestMemory(BuddyAllocator(64 << 20)), seed=seed)
        while not stop.is_set():
            await ctx.alloc_bytes("x", 4 << 20, 0)
            await ctx.free_group("x")

    tasks = [asyncio.create_task(burn(i)) for i in range(burners)]
    worst = 0.0
    try:
        for _ in range(20):
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - t0)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        share.shared = None
    return worst


async def test_a_shared_loop_stays_responsive_under_busy_workloads() -> None:
    # Same loop, same burners, in one run: only the share differs. Without it a
    # waiter waits for every burner's slice; with it, about one window.
    alone = await _probe_wait(60, None)
    shared = await _probe_wait(60, share.LoopShare(window=0.01, share=0.5))
    assert shared < alone / 2, (shared, alone)


async def test_workloads_still_progress_under_the_share() -> None:
    share.shared = share.LoopShare(window=0.01, share=0.5)
    try:
        ctx = WorkloadContext(GuestMemory(BuddyAllocator(64 << 20)))
        got = await asyncio.wait_for(ctx.alloc_bytes("x", 8 << 20, 0), 10)
    finally:
        share.shared = None
    assert got == 2048
