"""Replaying events against the buddy allocator: exact blocks, inconsistencies counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest.memory import GuestMemory
from guest.mm import BuddyAllocator
from guest.mm.check import check_invariants
from guest.trace.parse import parse_trace
from guest.trace.replay import (
    LOW_FILL,
    ReplayError,
    ReplayStats,
    fill_warning,
    plan_replay,
    prepare,
    replay,
    summary,
)
from guest.workloads.base import WorkloadContext
from pagehint.config import BARE_MEMORY


def line(t: float, event: str, pfn: int, order: int) -> str:
    extra = " migratetype=0 gfp_flags=GFP_KERNEL" if event == "mm_page_alloc" else ""
    return (
        f"  app-10 [000] ..... {t:.6f}: {event}: page=0000000012345678 "
        f"pfn={pfn:#x} order={order}{extra}\n"
    )


def trace_file(tmp_path: Path, events: list[tuple[str, int, int]]) -> str:
    p = tmp_path / "t.trace"
    p.write_text("".join(line(1.0 + i * 1e-3, e, pfn, o) for i, (e, pfn, o) in enumerate(events)))
    return str(p)


async def run(path: str, ram: int | None = None, mapping: str = "identity", speed=None):  # type: ignore[no-untyped-def]
    plan = plan_replay(parse_trace(path), mapping)
    mm = BuddyAllocator(ram or plan.ram_bytes, model=BARE_MEMORY)
    ctx = WorkloadContext(GuestMemory(mm))
    stats = ReplayStats()
    prepare(plan, ctx, stats)
    await replay(plan, ctx, speed, stats)
    check_invariants(mm)
    return plan, mm, stats


async def test_exact_blocks_and_the_state_before_the_trace(tmp_path: Path) -> None:
    path = trace_file(
        tmp_path,
        [
            ("mm_page_free", 0x2000, 2),  # first seen freed: allocated before the trace
            ("mm_page_alloc", 0x3005, 0),
            ("mm_page_alloc", 0x3008, 3),
            ("mm_page_free", 0x3005, 0),
        ],
    )
    plan, mm, stats = await run(path)
    assert plan.initial == [(0x2000, 2)]
    assert plan.ram_bytes == 64 << 20  # covers pfn 0x3010, at least the minimum
    assert stats.inconsistencies == {}
    assert stats.events == 4 and stats.allocs == 2 and stats.frees == 2
    assert mm.block_at(0x3008).state == "allocated" and mm.block_at(0x3008).order == 3
    assert mm.allocated_pages == 8


async def test_inconsistencies_are_counted_by_kind(tmp_path: Path) -> None:
    path = trace_file(
        tmp_path,
        [
            ("mm_page_alloc", 0x100, 0),
            ("mm_page_alloc", 0x100, 0),  # already allocated
            ("mm_page_free", 0x100, 0),
            ("mm_page_free", 0x100, 0),  # already free
            ("mm_page_alloc", 0x203, 2),  # not aligned to its order
            ("mm_page_alloc", 0x400, 3),
            ("mm_page_free", 0x402, 1),  # part of an order-3 block: split, then freed
        ],
    )
    _, mm, stats = await run(path)
    assert stats.inconsistencies == {
        "alloc_not_free": 1,
        "free_not_allocated": 1,
        "misaligned": 1,
        "free_reshaped": 1,
    }
    assert mm.allocated_pages == 6  # 0x400, 0x401, 0x404..0x407 stay


async def test_pfns_outside_a_smaller_ram(tmp_path: Path) -> None:
    path = trace_file(tmp_path, [("mm_page_alloc", 0x100000, 0), ("mm_page_alloc", 0x10, 0)])
    plan, _, stats = await run(path, ram=64 << 20)
    assert plan.ram_bytes == (0x100001 * 4096 + (4 << 20) - 1) // (4 << 20) * (4 << 20)
    assert stats.inconsistencies == {"outside_ram": 1}


async def test_compact_mapping_keeps_buddies_and_shrinks_ram(tmp_path: Path) -> None:
    path = trace_file(
        tmp_path,
        [
            ("mm_page_alloc", 0x80_0401, 0),
            ("mm_page_alloc", 0x200_0000, 1),
            ("mm_page_free", 0x80_0401, 0),
        ],
    )
    plan, mm, stats = await run(path, mapping="compact")
    assert list(plan.pfns) == [0x1, 0x400, 0x1]  # blocks 0x2001, 0x8000 -> 0, 1
    assert plan.ram_bytes == 64 << 20 and stats.inconsistencies == {}
    assert mm.allocated_pages == 2


async def test_an_allocation_of_a_block_under_report_takes_another(tmp_path: Path) -> None:
    path = trace_file(tmp_path, [("mm_page_alloc", 0x800, 0), ("mm_page_free", 0x800, 0)])
    plan = plan_replay(parse_trace(path))
    mm = BuddyAllocator(plan.ram_bytes, model=BARE_MEMORY)
    ctx = WorkloadContext(GuestMemory(mm))
    mm.isolate(0x800, 10)  # the hinting worker holds it, as page_reporting_cycle would
    stats = ReplayStats()
    await replay(plan, ctx, None, stats)
    assert stats.substituted == 1 and stats.inconsistencies == {}
    # the substitute was freed by the trace's free of 0x800; the isolated block untouched
    assert mm.allocated_pages == 0 and mm.block_at(0x800).state == "isolated"
    mm.putback(0x800, 10)
    check_invariants(mm)


async def test_untouched_pages_can_start_allocated(tmp_path: Path) -> None:
    path = trace_file(tmp_path, [("mm_page_alloc", 0x805, 0), ("mm_page_free", 0x805, 0)])
    plan = plan_replay(parse_trace(path))
    mm = BuddyAllocator(plan.ram_bytes, model=BARE_MEMORY)
    ctx = WorkloadContext(GuestMemory(mm))
    stats = ReplayStats()
    prepare(plan, ctx, stats, untouched="allocated")
    assert stats.untouched_allocated_pages == mm.nr_pages - 1
    await replay(plan, ctx, None, stats)
    assert stats.inconsistencies == {} and mm.nr_free_pages == 1
    check_invariants(mm)


async def test_untouched_pages_start_reported_as_on_a_guest_that_has_been_up(
    tmp_path: Path,
) -> None:
    from guest.mm.exact import containing_block
    from guest.mm.procfs import reported_pages

    # A block allocated before the trace (first seen freed) and one page allocated
    # and freed by it: everything else has been free (so reported) for long.
    path = trace_file(
        tmp_path,
        [("mm_page_free", 0x1200, 9), ("mm_page_alloc", 0x805, 0), ("mm_page_free", 0x805, 0)],
    )
    plan = plan_replay(parse_trace(path))
    for untouched, reported_at_start in (("reported", True), ("free", False)):
        mm = BuddyAllocator(plan.ram_bytes, model=BARE_MEMORY)
        ctx = WorkloadContext(GuestMemory(mm))
        stats = ReplayStats()
        prepare(plan, ctx, stats, untouched=untouched)
        free = mm.nr_free_pages
        assert reported_pages(mm) == (free if reported_at_start else 0)
        assert stats.untouched_reported_pages == (free if reported_at_start else 0)
        await replay(plan, ctx, None, stats)
        # What the trace freed (the order-9 block, merged) is unreported: a policy
        # reports it, and (with "reported") little else.
        head, _ = containing_block(mm, 0x1200)
        block = mm.block_at(head)
        assert block.state == "free" and not block.reported and block.order >= 9
        check_invariants(mm)


async def test_speed_follows_the_trace_clock(tmp_path: Path) -> None:
    p = tmp_path / "slow.trace"
    p.write_text(line(1.0, "mm_page_alloc", 0x10, 0) + line(1.2, "mm_page_free", 0x10, 0))
    plan = plan_replay(parse_trace(str(p)))
    ctx = WorkloadContext(GuestMemory(BuddyAllocator(plan.ram_bytes, model=BARE_MEMORY)))
    stats = ReplayStats()
    await replay(plan, ctx, 2.0, stats)  # 0.2 s of trace at twice the speed
    assert 0.09 <= stats.seconds < 1.0
    s = summary(plan, stats, 2.0)
    assert s["replayed"] == 2 and s["speed"] == 2.0 and s["trace_seconds"] == pytest.approx(0.2)


def test_an_empty_trace_cannot_be_replayed(tmp_path: Path) -> None:
    p = tmp_path / "empty.trace"
    p.write_text("# tracer: nop\n")
    with pytest.raises(ReplayError, match="no mm_page_alloc"):
        plan_replay(parse_trace(str(p)))


def test_block_fill_is_the_share_of_the_touched_blocks_pages_the_trace_names(
    tmp_path: Path,
) -> None:
    # Block 0: pages 512-1023 (an order-9 allocation); block 1: one page. Identity
    # and compact map the same blocks, so the fill is the same.
    path = trace_file(tmp_path, [("mm_page_alloc", 0x200, 9), ("mm_page_alloc", 0x400, 0)])
    for mapping in ("identity", "compact"):
        plan = plan_replay(parse_trace(path), mapping)
        assert plan.block_fill == pytest.approx(513 / 2048)
    assert "names 25.0% of the pages" in fill_warning(513 / 2048)
    assert "names <0.1% of" in fill_warning(1 / 1024) and "names 49.9% of" in fill_warning(0.4995)
    # A pfn far past any RAM (refused later, with its reason) costs a block, not RAM;
    # a misaligned event counts within its block.
    far = trace_file(tmp_path, [("mm_page_alloc", 1 << 40, 0), ("mm_page_alloc", 0x7FF, 3)])
    assert plan_replay(parse_trace(far)).block_fill == pytest.approx(2 / 2048)
    assert fill_warning(LOW_FILL) == ""
