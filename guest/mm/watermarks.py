"""Zone watermarks computed the way Linux does (mm/page_alloc.c).

``min_free_kbytes = sqrt(lowmem_kbytes * 16)`` clamped to [128, 262144]; each
zone gets a share of it proportional to its managed pages (WMARK_MIN); low and
high add ``max(min/4, managed * watermark_scale_factor / 10000)`` once and twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from guest.mm.constants import PAGE_SIZE
from guest.mm.zone import Zone

WATERMARK_SCALE_FACTOR = 10  # the kernel's default, in 1/10000ths of a zone


def min_free_kbytes(total_pages: int) -> int:
    lowmem_kbytes = total_pages * (PAGE_SIZE // 1024)
    return max(128, min(262144, math.isqrt(lowmem_kbytes * 16)))


def set_watermarks(zones: Sequence[Zone], min_kbytes: int | None = None) -> int:
    """Set each zone's min/low/high; returns the min_free_kbytes used."""
    total = sum(z.managed_pages for z in zones)
    kbytes = min_free_kbytes(total) if min_kbytes is None else min_kbytes
    pages_min = kbytes // (PAGE_SIZE // 1024)
    for zone in zones:
        share = pages_min * zone.managed_pages // total
        gap = max(share // 4, zone.managed_pages * WATERMARK_SCALE_FACTOR // 10000)
        zone.wmark_min = share
        zone.wmark_low = share + gap
        zone.wmark_high = share + 2 * gap
    return kbytes
