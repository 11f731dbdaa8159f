"""Zone watermarks, lowmem reserves and per-CPU list sizes, computed as Linux 6.1
does (mm/page_alloc.c, mm/khugepaged.c).

- ``min_free_kbytes = sqrt(lowmem_kbytes * 16)`` clamped to [128, 262144]
  (calculate_min_free_kbytes), over the managed pages;
- with THP, khugepaged raises it to keep free pageblocks for fallbacks
  (set_recommended_min_free_kbytes): ``pageblock_nr_pages * nr_zones * (2 +
  MIGRATE_PCPTYPES**2)``, at most 5% of nr_free_buffer_pages(); 45,056 kB on a
  2 GiB guest, as the reference guest's /proc/sys/vm/min_free_kbytes reads;
- each zone gets a share of it proportional to its managed pages (WMARK_MIN);
  low and high add ``max(min/4, managed * watermark_scale_factor / 10000)`` once
  and twice (__setup_per_zone_wmarks);
- ``lowmem_reserve[j]`` of zone i: the managed pages of zones i+1..j over
  ``sysctl_lowmem_reserve_ratio[i]`` (setup_per_zone_lowmem_reserve);
- per-CPU lists: ``batch`` from zone_batchsize(), ``high`` from zone_highsize()
  (the low watermark split over the node's CPUs), recomputed whenever the
  watermarks are (setup_per_zone_wmarks -> zone_pcp_update).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from guest.mm.constants import MIGRATE_PCPTYPES, PAGE_SIZE, PAGEBLOCK_ORDER
from guest.mm.zone import Zone

WATERMARK_SCALE_FACTOR = 10  # the kernel's default, in 1/10000ths of a zone
# sysctl_lowmem_reserve_ratio: DMA 256, DMA32 256, Normal 32 (mm/page_alloc.c).
LOWMEM_RESERVE_RATIO = (256, 256, 32)


def min_free_kbytes(total_pages: int) -> int:
    lowmem_kbytes = total_pages * (PAGE_SIZE // 1024)
    return max(128, min(262144, math.isqrt(lowmem_kbytes * 16)))


def recommended_min_free_kbytes(zones: Sequence[Zone]) -> int:
    """set_recommended_min_free_kbytes(): what khugepaged asks for with THP on.

    Called after the plain watermarks are set: nr_free_buffer_pages() is the
    managed pages above each zone's high watermark."""
    nr_zones = sum(1 for z in zones if z.managed_pages)
    pageblock = 1 << PAGEBLOCK_ORDER
    recommended = pageblock * nr_zones * 2 + pageblock * nr_zones * MIGRATE_PCPTYPES**2
    buffer_pages = sum(max(0, z.managed_pages - z.wmark_high) for z in zones)
    return min(recommended, buffer_pages // 20) * (PAGE_SIZE // 1024)


def set_watermarks(
    zones: Sequence[Zone], min_kbytes: int | None = None, thp: bool = False, cpus: int = 1
) -> int:
    """Set each zone's min/low/high, lowmem_reserve and per-CPU list sizes.

    Returns the min_free_kbytes used: ``min_kbytes`` when given (as writing
    /proc/sys/vm/min_free_kbytes), else the kernel's, raised for THP."""
    total = sum(z.managed_pages for z in zones)
    kbytes = min_free_kbytes(total) if min_kbytes is None else min_kbytes
    _setup_wmarks(zones, kbytes)
    if thp and min_kbytes is None:
        raised = recommended_min_free_kbytes(zones)
        if raised > kbytes:
            kbytes = raised
            _setup_wmarks(zones, kbytes)
    _setup_lowmem_reserve(zones)
    for zone in zones:
        batch = max(1, zone_batchsize(zone.managed_pages))
        zone.pcp.set_high_and_batch(zone_highsize(zone.wmark_low, batch, cpus), batch)
    return kbytes


def _setup_wmarks(zones: Sequence[Zone], kbytes: int) -> None:
    total = sum(z.managed_pages for z in zones)
    pages_min = kbytes // (PAGE_SIZE // 1024)
    for zone in zones:
        share = pages_min * zone.managed_pages // total if total else 0
        gap = max(share // 4, zone.managed_pages * WATERMARK_SCALE_FACTOR // 10000)
        zone.wmark_min = share
        zone.wmark_low = share + gap
        zone.wmark_high = share + 2 * gap


def _setup_lowmem_reserve(zones: Sequence[Zone]) -> None:
    for i, zone in enumerate(zones):
        ratio = LOWMEM_RESERVE_RATIO[zone.index] if zone.index < len(LOWMEM_RESERVE_RATIO) else 0
        reserve = [0] * len(zones)
        upper = 0
        for j in range(i + 1, len(zones)):
            upper += zones[j].managed_pages
            reserve[j] = upper // ratio if ratio and zone.managed_pages else 0
        zone.lowmem_reserve = reserve


def zone_batchsize(managed_pages: int) -> int:
    """zone_batchsize(): about a quarter of a thousandth of the zone, at most 1 MiB's
    worth before the clamp, rounded to 2**n - 1 (0 for tiny zones; callers take 1)."""
    batch = min(managed_pages >> 10, (1 << 20) // PAGE_SIZE) // 4
    batch = max(batch, 1)
    n = batch + batch // 2
    return (1 << (n.bit_length() - 1)) - 1


def zone_highsize(low_wmark: int, batch: int, cpus: int) -> int:
    """zone_highsize() with percpu_pagelist_high_fraction 0: the zone's low
    watermark split over the node's CPUs, at least four batches."""
    return max(low_wmark // max(1, cpus), batch << 2)
