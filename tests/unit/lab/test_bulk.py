"""lab.bulk builds exactly the state page-by-page allocation reaches."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guest.mm import AllocatorError, BuddyAllocator
from guest.mm.check import check_invariants
from guest.mm.procfs import buddyinfo
from lab.bulk import (
    allocated_pfns,
    compact_occupancy,
    random_occupancy,
    with_allocated_pages,
)
from pagehint.config import BARE_MEMORY

RAM = 64 << 20


def page_by_page(occupancy: bytes) -> BuddyAllocator:
    mm = BuddyAllocator(RAM, model=BARE_MEMORY)
    pages = [mm.alloc(0) for _ in range(mm.nr_pages)]
    for p in pages:
        if not occupancy[p]:
            mm.free(p, 0)
    return mm


@settings(max_examples=8, deadline=None)
@given(st.floats(0.0, 1.0), st.integers(0, 2**32))
def test_random_state_equals_page_by_page(fraction: float, seed: int) -> None:
    occ = random_occupancy(RAM, fraction, seed)
    built = with_allocated_pages(RAM, occ)
    check_invariants(built)
    ref = page_by_page(occ)
    assert bytes(built.pg) == bytes(ref.pg)
    assert buddyinfo(built) == buddyinfo(ref)
    assert built.nr_free_pages == ref.nr_free_pages
    assert allocated_pfns(built) == [p for p in range(built.nr_pages) if occ[p]]


def test_compact_state_and_use_afterwards() -> None:
    built = with_allocated_pages(RAM, compact_occupancy(RAM, 0.5))
    check_invariants(built)
    assert built.allocated_pages == built.nr_pages // 2
    # The built allocator works as any other: free everything, all merges back.
    for p in allocated_pfns(built):
        built.free(p, 0)
    check_invariants(built)
    assert buddyinfo(built)["DMA32"][10] == (RAM - (16 << 20)) >> 22


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(AllocatorError, match="page states"):
        with_allocated_pages(RAM, b"\x00" * 10)
    with pytest.raises(AllocatorError, match="between 0 and 1"):
        random_occupancy(RAM, 1.5)
