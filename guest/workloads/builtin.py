"""Built-in workloads: memhog, churn, fragment."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from guest.workloads.base import WorkloadContext
from guest.workloads.held import HeldBlocks


@dataclass(frozen=True)
class WorkloadParams:
    """Knobs of the built-in workloads (``--rate`` sets churn's)."""

    # memhog: allocate this fraction of RAM, hold it, free it, stay idle.
    hog_fraction: float = 0.5
    hold_seconds: float = 1.0
    idle_seconds: float = 3.0
    # churn: random alloc/free of orders 0..3 around this occupancy, at this rate.
    occupancy: float = 0.5
    ops_per_second: float = 20_000.0
    max_order: int = 3


async def memhog(ctx: WorkloadContext, p: WorkloadParams) -> None:
    """Allocate, touch, hold, free; repeat until stopped."""
    size = int(ctx.memory.mm.ram_bytes * p.hog_fraction)
    cycle = 0
    while not ctx.stop.is_set():
        ctx.mark(f"alloc-{cycle}")
        await ctx.alloc_bytes("hog", size, 0)
        if not await ctx.sleep(p.hold_seconds):
            break
        ctx.mark(f"free-{cycle}")
        await ctx.free_group("hog")
        if not await ctx.sleep(p.idle_seconds):
            break
        cycle += 1


async def churn(ctx: WorkloadContext, p: WorkloadParams, seconds: float | None = None) -> None:
    """Random allocations and frees of orders 0..max_order around a target occupancy."""
    await churn_for(ctx, p.occupancy, p.ops_per_second, p.max_order, seconds)


async def churn_for(
    ctx: WorkloadContext,
    occupancy: float,
    ops_per_second: float,
    max_order: int = 3,
    seconds: float | None = None,
    group: str = "churn",
    ops: int | None = None,
) -> None:
    """Churn at ``ops_per_second`` for ``seconds``, or until ``ops`` operations are
    done, or (neither) until stopped. A count runs the same history on a slow
    backend as on a fast one: by time, a backend whose touches cost more does
    fewer operations and so touches a different amount of memory."""
    mm = ctx.memory.mm
    target_pages = int(mm.nr_pages * occupancy)
    held = ctx.groups.setdefault(group, HeldBlocks())
    held_pages = held.pages()
    # A slice of the work every 10 ms, or every operation's share of a second at
    # rates under 100/s (a slice of one operation every 10 ms would be 100/s).
    tick = max(0.01, 1.0 / ops_per_second)
    per_tick = max(1, int(ops_per_second * tick))
    loop = asyncio.get_running_loop()
    start = loop.time()
    left = ops
    while not ctx.stop.is_set():
        if seconds is not None and loop.time() - start >= seconds:
            break
        if left is not None and left <= 0:
            break
        slice_start = loop.time()
        for _ in range(per_tick if left is None else min(per_tick, left)):
            if ctx.stop.is_set():  # a long slice (a high --rate) still stops at once
                break
            if left is not None:
                left -= 1
            await ctx.unpaused()
            held_pages += _churn_once(ctx, held, held_pages, target_pages, max_order)
            # A slice at a high --rate is long: on a shared loop it takes turns too.
            await ctx.tick()
        if left is not None and left <= 0:
            break  # done: no wait for a next slice that will not come
        now = loop.time()
        wait = tick - (now - slice_start)
        if seconds is not None:  # a slow rate's long tick still ends on time
            wait = min(wait, start + seconds - now)
        await ctx.sleep(max(0.0, wait))
    if not held:
        ctx.groups.pop(group, None)


def _churn_once(
    ctx: WorkloadContext, held: HeldBlocks, held_pages: int, target_pages: int, max_order: int
) -> int:
    """One operation of a churn, drifting toward its target (allocating more often
    when below it); the change in the pages it holds."""
    rng = ctx.rng
    p_alloc = 0.5 + 0.5 * (target_pages - held_pages) / max(1, target_pages)
    if held and rng.random() >= p_alloc:
        pfn, order = held.take(rng.randrange(len(held)))
        ctx.memory.free(pfn, order)
        ctx.stats.free_ops += 1
        return -(1 << order)
    order = rng.randint(0, max_order)
    return ctx.alloc_into(held, order) << order


async def fragment(ctx: WorkloadContext, p: WorkloadParams) -> None:
    """Allocate a share of RAM page by page, then free every other page, and hold."""
    size = int(ctx.memory.mm.ram_bytes * p.hog_fraction)
    ctx.mark("alloc")
    await ctx.alloc_bytes("frag", size, 0)
    ctx.mark("free-every-other")
    await ctx.free_group("frag", stride=2, offset=0)
    await ctx.stop.wait()


WorkloadFn = Callable[[WorkloadContext, WorkloadParams], Awaitable[None]]
BUILTINS: dict[str, WorkloadFn] = {"memhog": memhog, "churn": churn, "fragment": fragment}


async def run_builtin(
    name: str, ctx: WorkloadContext, params: WorkloadParams | None = None
) -> None:
    await BUILTINS[name](ctx, params or WorkloadParams())
