"""The guest's boot footprint: held to the end, in its order mix, scattered among holes."""

from __future__ import annotations

from collections import Counter

import pytest

from guest.memory import GuestMemory
from guest.mm import BuddyAllocator
from guest.mm.check import check_invariants
from guest.mm.constants import PAGE_SIZE, PAGEBLOCK_ORDER
from guest.workloads.base import WorkloadContext
from guest.workloads.boot import GROUP, boot, parse_orders
from pagehint.config import BARE_MEMORY, BootConfig, ConfigError, GuestConfig, TraceConfig
from pagehint.errors import UsageError

MIB = 1 << 20
CHUNK = 1 << PAGEBLOCK_ORDER  # pages in a 2 MiB chunk: the hinting order


def _ctx(ram: int = 512 * MIB) -> tuple[BuddyAllocator, WorkloadContext]:
    mm = BuddyAllocator(ram, model=BARE_MEMORY)
    return mm, WorkloadContext(GuestMemory(mm))


async def test_held_size_and_order_mix() -> None:
    mm, ctx = _ctx()
    cfg = BootConfig(size_bytes=64 * MIB, orders=((0, 50), (2, 40), (3, 10)), holes=0.7)
    held = await boot(ctx, cfg, seed=1)
    # What stays held is the footprint (each block freed or kept at random: a few %).
    assert held == pytest.approx(64 * MIB, rel=0.05)
    assert mm.allocated_pages * PAGE_SIZE == held
    by_order = Counter[int]()
    for _, order in ctx.groups[GROUP]:
        by_order[order] += PAGE_SIZE << order
    shares = {o: b / held for o, b in by_order.items()}
    assert shares == pytest.approx({0: 0.5, 2: 0.4, 3: 0.1}, abs=0.03)
    assert [label for _, label in ctx.stats.marks] == ["boot", "booted"]
    check_invariants(mm)


async def test_holes_are_interleaved_below_the_hinting_order() -> None:
    # The span the boot touched (footprint and holes) is in chunks that each keep
    # some pages held: no 2 MiB report can take the holes, so the host keeps them.
    mm, ctx = _ctx()
    cfg = BootConfig(size_bytes=32 * MIB, holes=0.7)
    await boot(ctx, cfg, seed=2)
    chunks = {pfn // CHUNK for pfn, _ in ctx.groups[GROUP]}
    span_chunks = cfg.span_bytes() // (CHUNK * PAGE_SIZE)
    assert len(chunks) >= span_chunks  # scattered over the whole span, not packed
    free_in_chunks = len(chunks) * CHUNK - mm.allocated_pages
    assert free_in_chunks * PAGE_SIZE == pytest.approx(32 * MIB * 0.7, rel=0.15)
    # Every page outside those chunks is free in whole 2 MiB blocks (reportable).
    outside = mm.nr_pages - len(chunks) * CHUNK
    assert mm.free_pages_at_or_above(PAGEBLOCK_ORDER) == outside


async def test_no_footprint_changes_nothing() -> None:
    mm, ctx = _ctx()
    assert await boot(ctx, BootConfig(), seed=0) == 0
    assert mm.allocated_pages == 0
    assert ctx.stats.marks == [] and ctx.stats.alloc_ops == 0
    # And the workload's own random stream is untouched by a boot.
    _, other = _ctx()
    await boot(other, BootConfig(size_bytes=8 * MIB), seed=0)
    assert other.rng.random() == ctx.rng.random()


def test_orders_parse_and_check() -> None:
    assert parse_orders("0:52, 1:10,2:33,3:5") == ((0, 52), (1, 10), (2, 33), (3, 5))
    for bad, said in (
        ("0-50", "is not ORDER:PERCENT"),
        ("0:a", "whole numbers"),
        ("11:100", "order 11 must be 0..10"),
        ("", "at least one"),
    ):
        with pytest.raises(UsageError, match=said):
            parse_orders(bad)
    for orders, said in (
        (((0, 60), (1, 30)), "add up to 90"),
        (((0, 50), (0, 50)), "given twice"),
        (((0, 0), (1, 100)), "must be 1..100"),
    ):
        with pytest.raises(ConfigError, match=said):
            BootConfig(size_bytes=MIB, orders=orders)


def test_guest_config_checks_the_footprint_against_its_ram() -> None:
    with pytest.raises(ConfigError, match="more than --ram"):
        GuestConfig(ram_bytes=256 * MIB, boot=BootConfig(size_bytes=200 * MIB))
    with pytest.raises(ConfigError, match="not for --trace"):
        GuestConfig(trace=TraceConfig(path="t"), boot=BootConfig(size_bytes=MIB))
    with pytest.raises(ConfigError, match="--boot-footprint"):
        BootConfig(size_bytes=-1)
    with pytest.raises(ConfigError, match="--boot-holes"):
        BootConfig(holes=float("nan"))
    assert GuestConfig().boot.size_bytes == 0  # plain `pagehint guest`: no footprint
