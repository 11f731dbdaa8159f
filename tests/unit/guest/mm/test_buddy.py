from __future__ import annotations

import pytest

from guest.mm import MAX_ORDER, AllocatorError, BuddyAllocator
from guest.mm.check import check_invariants
from guest.mm.procfs import buddyinfo, buddyinfo_text, reported_pages
from pagehint.config import BARE_MEMORY


def test_ram_size_limits() -> None:
    for bad in (32 << 20, (64 << 30) + (4 << 20), (64 << 20) + 4096, 100 << 30):
        with pytest.raises(AllocatorError):
            BuddyAllocator(bad, model=BARE_MEMORY)
    BuddyAllocator(64 << 20, model=BARE_MEMORY)
    BuddyAllocator(68 << 20, model=BARE_MEMORY)


def test_zones_follow_x86_64_layout() -> None:
    mm = BuddyAllocator(6 << 30, model=BARE_MEMORY)
    names = [(z.name, z.start_pfn, z.end_pfn) for z in mm.zones]
    assert names == [
        ("DMA", 0, 4096),
        ("DMA32", 4096, 1 << 20),
        ("Normal", 1 << 20, (6 << 30) >> 12),
    ]
    small = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    assert [z.name for z in small.zones] == ["DMA", "DMA32"]
    assert buddyinfo(small)["DMA"][MAX_ORDER] == 4
    check_invariants(mm)


def test_alloc_splits_smallest_larger_block_and_free_merges_back() -> None:
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    pfn = mm.alloc(0)
    info = buddyinfo(mm)["DMA32"]
    # one order-10 block was split: one free block at each order 0..9
    assert info[:MAX_ORDER] == [1] * MAX_ORDER
    check_invariants(mm)
    mm.free(pfn, 0)
    assert buddyinfo(mm)["DMA32"] == [0] * MAX_ORDER + [12]
    check_invariants(mm)


def test_alloc_prefers_highest_zone_then_falls_back() -> None:
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    blocks = [mm.alloc(MAX_ORDER) for _ in range(12)]
    assert all(mm.zone_of(p).name == "DMA32" for p in blocks)
    fallback = mm.alloc(MAX_ORDER)
    assert mm.zone_of(fallback).name == "DMA"


def test_exhaustion_returns_minus_one() -> None:
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    for _ in range(16):
        assert mm.alloc(MAX_ORDER) >= 0
    assert mm.alloc(0) == -1
    assert mm.alloc_failures == 1
    check_invariants(mm)


def test_bad_frees_are_clear_errors_and_change_nothing() -> None:
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    a = mm.alloc(1)
    before = bytes(mm.pg), buddyinfo(mm)
    with pytest.raises(AllocatorError, match="order"):
        mm.free(a, 0)
    with pytest.raises(AllocatorError, match="not the head"):
        mm.free(a + 1, 0)
    with pytest.raises(AllocatorError, match="free, not allocated"):
        mm.free(a + 2, 1)  # the split-off order-1 buddy is free
    with pytest.raises(AllocatorError, match="outside"):
        mm.free(10**9, 0)
    assert (bytes(mm.pg), buddyinfo(mm)) == before
    mm.free(a, 1)
    with pytest.raises(AllocatorError):
        mm.free(a, 1)  # double free
    check_invariants(mm)


def test_isolated_block_is_never_allocated_and_putback_skips_hook() -> None:
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    calls: list[int] = []
    mm.set_hook(lambda zone, order: calls.append(order), 0)
    # isolate every free block of the machine; allocation must then fail
    isolated = []
    for zone in mm.zones:
        for order, area in enumerate(zone.free_area):
            for pfn in list(area):
                mm.isolate(pfn, order)
                isolated.append((pfn, order))
    assert mm.nr_free_pages == 0
    assert mm.alloc(0) == -1
    check_invariants(mm)
    for pfn, order in isolated:
        mm.putback(pfn, order)
    assert calls == []
    assert mm.nr_free_pages == mm.nr_pages
    check_invariants(mm)


def test_hook_gets_final_merged_order_and_respects_min_order() -> None:
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    seen: list[tuple[str, int]] = []
    a = mm.alloc(0)
    b = mm.alloc(0)
    mm.set_hook(lambda zone, order: seen.append((zone.name, order)), 0)
    mm.free(a, 0)
    mm.free(b, 0)  # merges all the way up
    assert seen == [("DMA32", 0), ("DMA32", MAX_ORDER)]
    seen.clear()
    c = mm.alloc(0)
    d = mm.alloc(0)
    mm.set_hook(lambda zone, order: seen.append((zone.name, order)), 9)
    mm.free(c, 0)
    mm.free(d, 0)
    assert seen == [("DMA32", MAX_ORDER)]


def test_putback_to_tail_goes_to_tail_and_merges() -> None:
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    area = mm.zones[1].free_area[MAX_ORDER]
    first = area.first()
    assert first is not None
    mm.isolate(first, MAX_ORDER)
    mm.putback(first, MAX_ORDER, to_tail=True)
    assert list(area)[-1] == first
    mm.isolate(first, MAX_ORDER)
    mm.putback(first, MAX_ORDER, to_tail=False)
    assert next(iter(area)) == first
    check_invariants(mm)


def test_isolate_refuses_non_free_or_wrong_order() -> None:
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    a = mm.alloc(0)
    with pytest.raises(AllocatorError, match="allocated"):
        mm.isolate(a, 0)
    with pytest.raises(AllocatorError, match="order"):
        mm.isolate(a + 1, 1)
    with pytest.raises(AllocatorError):
        mm.putback(a, 0)


def test_reported_mark_cleared_by_alloc_and_merge() -> None:
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    a = mm.alloc(0)  # splits a top block: free buddies at orders 0..9
    b = a ^ 1
    assert mm.mark_reported(b, 0)
    assert mm.is_reported(b, 0)
    assert reported_pages(mm) == 1
    mm.free(a, 0)  # merges with the reported buddy: mark cleared
    assert reported_pages(mm) == 0
    top = mm.zones[1].free_area[MAX_ORDER].first()
    assert top is not None
    assert mm.mark_reported(top, MAX_ORDER)
    got = mm.alloc(MAX_ORDER)
    assert mm.block_at(got).state == "allocated"
    assert not mm.block_at(got).reported
    check_invariants(mm)


def test_watermarks_like_the_kernel() -> None:
    mm = BuddyAllocator(4 << 30, model=BARE_MEMORY)
    # min_free_kbytes = sqrt(4 GiB in KiB * 16) = 8192
    assert mm.min_free_kbytes == 8192
    dma32 = mm.zones[1]
    assert 0 < dma32.wmark_min < dma32.wmark_low < dma32.wmark_high
    total_min = sum(z.wmark_min for z in mm.zones)
    assert abs(total_min - 8192 // 4) <= len(mm.zones)


def test_buddyinfo_text_looks_like_proc() -> None:
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    text = buddyinfo_text(mm)
    assert text.splitlines()[0].startswith("Node 0, zone      DMA")
    assert len(text.splitlines()[1].split()) == 4 + 11


def test_64gib_guest_initialises() -> None:
    mm = BuddyAllocator(64 << 30, model=BARE_MEMORY)
    assert mm.nr_free_pages == 16 << 20
    assert mm.alloc(0) >= 1 << 20  # from Normal
