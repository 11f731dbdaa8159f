"""Blocks in the states tests need them in."""

from __future__ import annotations

from guest.mm import MAX_ORDER, BuddyAllocator


def isolated_block(mm: BuddyAllocator) -> tuple[int, int]:
    """A top-order block allocated, freed and isolated, as a reporting pass takes it."""
    pfn = mm.alloc(MAX_ORDER)
    mm.free(pfn, MAX_ORDER)
    mm.isolate(pfn, MAX_ORDER)
    return pfn, MAX_ORDER
