"""Build a large allocator state in one go, as if a workload had made it.

Allocating half of a 64 GiB guest page by page took a minute; experiments
and benchmarks want such states in seconds. ``with_allocated_pages`` takes a
byte per page (non-zero: allocated, as an order-0 block) and produces exactly
the state the buddy allocator would have reached: every free page merged with
its free buddies as far as they go, the same blocks free at the same orders in
the same zones. (Within a free list the blocks are in ascending pfn order,
which page-by-page freeing need not give: the first allocations from a built
state may take other, equally free, blocks.) The work is done on whole byte strings
(slices, ``translate``, big-integer arithmetic) and never per page in Python.
"""

from __future__ import annotations

import random
import re

from guest.mm.buddy import AllocatorError, BuddyAllocator
from guest.mm.constants import ALLOCATED, FREE, MAX_ORDER, MIGRATE_MOVABLE, TAIL
from pagehint.config import BARE_MEMORY


def with_allocated_pages(
    ram_bytes: int, allocated: bytes | bytearray, min_free_kbytes: int | None = None
) -> BuddyAllocator:
    """An allocator in which page i is allocated (order 0) where ``allocated[i]`` is
    non-zero, and every other page is free, merged as far as its buddies allow.
    The plain buddy (BARE_MEMORY): no boot layout, no per-CPU lists."""
    mm = BuddyAllocator(ram_bytes, min_free_kbytes, model=BARE_MEMORY)
    n = mm.nr_pages
    if len(allocated) != n:
        raise AllocatorError(f"{len(allocated)} page states given for {n} pages")
    to_state = bytes([FREE] + [ALLOCATED] * 255)  # byte 0: free; any other: allocated
    pg = bytearray(bytes(allocated).translate(to_state))
    for order in range(MAX_ORDER):
        # Pair every aligned order-`order` block with its buddy: both free at this
        # order means they merge into the lower one at order + 1.
        step, half = 2 << order, 1 << order
        lower, upper = pg[0::step], pg[half::step]
        is_free = bytes(1 if b == FREE | order else 0 for b in range(256))
        width = len(lower)
        both = int.from_bytes(lower.translate(is_free), "big") & int.from_bytes(
            upper.translate(is_free), "big"
        )
        if not both:
            continue
        # Byte-wise with no carries: the lower head's order rises by one (FREE|o + 1
        # is FREE|(o+1)); the upper head (exactly FREE|o) becomes a tail (0).
        pg[0::step] = (int.from_bytes(lower, "big") + both).to_bytes(width, "big")
        pg[half::step] = (int.from_bytes(upper, "big") - both * (FREE | order)).to_bytes(
            width, "big"
        )
    assert TAIL == 0
    mm.pg[:] = pg
    heads = [re.compile(re.escape(bytes([FREE | order]))) for order in range(MAX_ORDER + 1)]
    for zone in mm.zones:
        for head, area in zip(heads, zone.free_area, strict=True):
            fl = area.free_list[MIGRATE_MOVABLE]
            fl.head = {}
            fl.tail = dict.fromkeys(
                m.start() for m in head.finditer(pg, zone.start_pfn, zone.end_pfn)
            )
        zone.nr_free_pages = sum(len(a) << a.order for a in zone.free_area)
    return mm


def random_occupancy(ram_bytes: int, fraction: float, seed: int = 0) -> bytes:
    """A byte per page, non-zero with probability ``fraction`` (independent pages)."""
    if not 0.0 <= fraction <= 1.0:
        raise AllocatorError(f"occupancy {fraction} is not between 0 and 1")
    n = ram_bytes >> 12
    cut = round(fraction * 256)
    # Random bytes below `cut` mark allocated pages (translated to 1, the rest to 0).
    table = bytes(1 if b < cut else 0 for b in range(256))
    return random.Random(seed).randbytes(n).translate(table)


def compact_occupancy(ram_bytes: int, fraction: float) -> bytes:
    """The lowest ``fraction`` of pages allocated, the rest free."""
    if not 0.0 <= fraction <= 1.0:
        raise AllocatorError(f"occupancy {fraction} is not between 0 and 1")
    n = ram_bytes >> 12
    k = round(fraction * n)
    return b"\x01" * k + bytes(n - k)


def allocated_pfns(mm: BuddyAllocator) -> list[int]:
    """Head pfns of every allocated order-0 block, in pfn order."""
    return [m.start() for m in re.finditer(re.escape(bytes([ALLOCATED])), mm.pg)]
