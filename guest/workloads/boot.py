"""The guest's boot footprint: what a booted Linux guest holds before any workload.

A real guest is not empty when its workload starts. Its kernel text and data,
slab caches, page tables, kernel stacks and userspace hold memory that is never
freed, in small blocks (order 0-3), with free holes between them that the boot
left behind (temporary buffers, init memory, page cache that came and went).
Those holes are below the hinting order, so no 2 MiB report can take them, and
the host holds them as it holds the pages around them.

``boot`` allocates that footprint at the start of the run, before the workload,
and holds it to the end (group ``boot``, which no workload names):

- blocks of the configured order mix (BootConfig.orders), in a shuffled order,
  so orders interleave as a kernel's and a userspace's allocations do;
- ``size x (1 + holes)`` bytes of them are allocated (each allocation touches its
  pages: the host holds them), then a random ``holes / (1 + holes)`` of the blocks
  are freed again: the holes, interleaved with what stays held.

Where it lands: the buddy allocator hands out the smallest free block that fits,
so the footprint is packed into a region of RAM (its pageblocks), not spread over
all of it. That is what a real boot leaves too: on the machine the defaults were
measured on, almost every free page was in order-10 blocks, the footprint and its
holes in a few hundred MiB of pageblocks (the kernel's anti-fragmentation groups
long-lived allocations by migratetype; this allocator has no migratetypes, and
packs them by taking the smallest block). The defaults and their sources are in
pagehint/config.py (BootConfig).
"""

from __future__ import annotations

import random

from guest.mm.constants import MAX_ORDER, PAGE_SIZE
from guest.workloads.base import WorkloadContext
from guest.workloads.held import HeldBlocks
from pagehint.config import BootConfig
from pagehint.errors import UsageError

GROUP = "boot"  # the held blocks: no workload or scenario step frees it


def parse_orders(text: str) -> tuple[tuple[int, int], ...]:
    """``"0:52,1:10,2:33,3:5"``: order:percent pairs (BootConfig checks the values)."""
    pairs: list[tuple[int, int]] = []
    for item in str(text).split(","):
        if not item.strip():
            continue
        order, sep, pct = item.partition(":")
        if not sep:
            raise UsageError(f"--boot-orders: {item.strip()!r} is not ORDER:PERCENT (e.g. 0:60)")
        try:
            pairs.append((int(order.strip()), int(pct.strip())))
        except ValueError:
            raise UsageError(
                f"--boot-orders: {item.strip()!r} is not ORDER:PERCENT with whole numbers"
            ) from None
    if not pairs:
        raise UsageError("--boot-orders: give at least one ORDER:PERCENT")
    for o, _ in pairs:
        if not 0 <= o <= MAX_ORDER:
            raise UsageError(f"--boot-orders: order {o} must be 0..{MAX_ORDER}")
    return tuple(pairs)


def format_orders(orders: tuple[tuple[int, int], ...]) -> str:
    return ",".join(f"{o}:{p}" for o, p in orders)


def plan(cfg: BootConfig, rng: random.Random) -> list[int]:
    """The orders of the blocks to allocate, in the order they are allocated.

    Each order gets its share of the span's bytes (rounded to whole blocks); the
    sequence is shuffled so the orders interleave."""
    span = cfg.span_bytes()
    blocks: list[int] = []
    for order, pct in cfg.orders:
        blocks += [order] * round(span * pct / 100 / (PAGE_SIZE << order))
    rng.shuffle(blocks)
    return blocks


async def boot(ctx: WorkloadContext, cfg: BootConfig, seed: int = 0) -> int:
    """Allocate and touch the footprint, free its holes, hold the rest to the end.

    Returns the bytes held. Its own random stream (from ``seed``), so a workload's
    sequence (churn's) is the same with or without a boot footprint."""
    if cfg.size_bytes <= 0:
        return 0
    rng = random.Random(f"boot-{seed}")
    ctx.mark("boot")
    blocks = ctx.groups.setdefault(GROUP, HeldBlocks())
    for order in plan(cfg, rng):
        if ctx.stop.is_set():
            break
        ctx.alloc_into(blocks, order)
        await ctx.tick()
    free_share = cfg.holes / (1 + cfg.holes)
    held = HeldBlocks()
    for pfn, order in blocks:
        if rng.random() < free_share:
            ctx.memory.free(pfn, order)
            ctx.stats.free_ops += 1
            await ctx.tick()
        else:
            held.append(pfn, order)
    ctx.groups[GROUP] = held
    ctx.mark("booted")
    return sum(PAGE_SIZE << o for _, o in held)
