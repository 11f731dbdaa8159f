"""Watermarks as mm/page_alloc.c computes them."""

from __future__ import annotations

import math

from guest.mm import BuddyAllocator
from guest.mm.layout import boot_layout
from guest.mm.watermarks import min_free_kbytes


def test_min_free_kbytes_is_sqrt_of_16_times_lowmem_clamped() -> None:
    gib = (1 << 30) // 4096
    assert min_free_kbytes(gib) == math.isqrt(1024 * 1024 * 16)  # 4096 KiB for 1 GiB
    assert min_free_kbytes(16) == 128  # tiny: the floor
    assert min_free_kbytes(1 << 40) == 262144  # huge: the ceiling


def test_zones_share_min_by_size_and_low_high_step_up() -> None:
    mm = BuddyAllocator(8 << 30)
    total_min = mm.min_free_kbytes // 4
    assert sum(z.wmark_min for z in mm.zones) <= total_min
    for z in mm.zones:
        assert z.wmark_min <= z.wmark_low <= z.wmark_high
        assert z.wmark_high - z.wmark_low == z.wmark_low - z.wmark_min
    # each zone's share is in proportion to its managed pages (__setup_per_zone_wmarks)
    # when khugepaged set them: before the end of boot freed the kernel image's gaps
    late = boot_layout("linux", mm.nr_pages).freed_late
    managed = [
        z.managed_pages - sum(max(0, min(e, z.end_pfn) - max(s, z.start_pfn)) for s, e in late)
        for z in mm.zones
    ]
    assert sum(managed) == sum(z.managed_pages for z in mm.zones) - sum(e - s for s, e in late)
    for z, pages in zip(mm.zones, managed, strict=True):
        assert z.wmark_min == total_min * pages // sum(managed)


def test_an_explicit_min_free_kbytes_is_used() -> None:
    assert BuddyAllocator(1 << 30, min_free_kbytes=65536).min_free_kbytes == 65536
