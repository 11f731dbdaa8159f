"""Exact blocks, for trace replay: the kernel said which block it allocated, and
the replay must allocate exactly that one (``alloc_at``), or take pages the
guest holds in another shape as the block the trace frees (``reshape_allocated``).
The allocator's own paths (alloc, free, isolate, putback) never need these:
they are surgery on its page array and free lists from outside, kept apart so
that the allocator reads as mm/page_alloc.c does."""

from __future__ import annotations

from guest.mm.buddy import AllocatorError, BuddyAllocator
from guest.mm.constants import (
    ALLOCATED,
    FREE,
    ISOLATED,
    MAX_ORDER,
    ORDER_MASK,
    PAGEBLOCK_ORDER,
    PCP,
    STATE_MASK,
    TAIL,
)


def containing_block(mm: BuddyAllocator, pfn: int) -> tuple[int, int]:
    """(head, flag) of the block that holds page ``pfn``.

    The first non-tail head met while aligning ``pfn`` down, order by order, is
    its block's head: a block's pages between its head and ``pfn`` are tails.
    """
    pg = mm.pg
    head, o = pfn, 0
    while pg[head] == TAIL and o < MAX_ORDER:
        o += 1
        head = pfn & ~((1 << o) - 1)
    return head, pg[head]


def alloc_at(mm: BuddyAllocator, pfn: int, order: int) -> str | None:
    """Allocate exactly the block ``[pfn, pfn + 2**order)``: the kernel's answer,
    replayed. Splits the free block that holds it (expand(), around ``pfn``).

    None on success; otherwise why not, with nothing changed: "outside" (not
    in RAM), "isolated" (hinting holds it now) or "not_free" (some page of it
    is allocated).
    """
    if not 0 <= order <= MAX_ORDER or pfn & ((1 << order) - 1):
        raise AllocatorError(f"alloc_at: pfn {pfn:#x} is not a block of order {order}")
    if pfn < 0 or pfn + (1 << order) > mm.nr_pages:
        return "outside"
    head, flag = containing_block(mm, pfn)
    if flag & STATE_MASK == PCP and head + (1 << (flag & ORDER_MASK)) > pfn:
        # On our per-CPU list: the traced kernel had it on one of its own (or in its
        # buddy). Back to the buddy without the hook, then taken from there.
        take_from_pcp(mm, head, flag & ORDER_MASK)
        head, flag = containing_block(mm, pfn)
    k = flag & ORDER_MASK
    state = flag & STATE_MASK
    if k < order or head + (1 << k) <= pfn:
        # The range spans several blocks: at least one is not free, or it
        # would have merged; an isolated one is what keeps it apart.
        return "isolated" if _any_isolated(mm, pfn, order) else "not_free"
    if state == ISOLATED:
        return "isolated"
    if state != FREE:
        return "not_free"
    zone = mm.zone_of(head)
    areas = zone.free_area
    mt = mm.pageblock_mt[head >> PAGEBLOCK_ORDER]
    areas[k].list_of(head, mt).remove(head)
    zone.nr_free_pages -= 1 << order
    pg = mm.pg
    # expand() around pfn: the half without it goes back free (unreported).
    while k > order:
        k -= 1
        half = head + (1 << k)
        if pfn >= half:
            pg[head] = FREE | k
            areas[k].free_list[mt].add_head(head)
            head = half
        else:
            pg[half] = FREE | k
            areas[k].free_list[mt].add_head(half)
    pg[pfn] = ALLOCATED | order
    return None


def take_from_pcp(mm: BuddyAllocator, pfn: int, order: int) -> None:
    """A block on the per-CPU list back into the buddy (merged, no hook)."""
    zone = mm.zone_of(pfn)
    pcp = zone.pcp
    i = pcp.find(pfn)
    if i < 0:
        raise AllocatorError(f"pfn {pfn:#x} is marked per-CPU but on no list")
    pcp.lists[i].remove(pfn)
    pcp.count -= 1 << order
    mm.pg[pfn] = ISOLATED | order
    zone.nr_isolated_pages += 1 << order
    mm.putback(pfn, order)


def _any_isolated(mm: BuddyAllocator, pfn: int, order: int) -> bool:
    pg = mm.pg
    end = pfn + (1 << order)
    p = pfn
    while p < end:
        flag = pg[p]
        if flag & STATE_MASK == ISOLATED:
            return True
        p += 1 << (flag & ORDER_MASK) if flag != TAIL else 1
    return False


def reshape_allocated(mm: BuddyAllocator, pfn: int, order: int) -> str | None:
    """Make ``[pfn, pfn + 2**order)`` one allocated block of ``order`` when every
    page of it is allocated in another shape: inside a larger allocated block
    (split into single pages first, as split_page() does) or as several
    smaller allocated blocks. None when done; else "not_allocated"."""
    if not 0 <= order <= MAX_ORDER or pfn & ((1 << order) - 1):
        raise AllocatorError(f"reshape: pfn {pfn:#x} is not a block of order {order}")
    if pfn < 0 or pfn + (1 << order) > mm.nr_pages:
        return "not_allocated"
    pg = mm.pg
    head, flag = containing_block(mm, pfn)
    if flag & STATE_MASK != ALLOCATED or head + (1 << (flag & ORDER_MASK)) <= pfn:
        return "not_allocated"
    k = flag & ORDER_MASK
    if k > order:
        # split_page(): the large block becomes single allocated pages.
        pg[head : head + (1 << k)] = bytes([ALLOCATED]) * (1 << k)
    end = pfn + (1 << order)
    p = pfn
    while p < end:
        flag = pg[p]
        if flag & STATE_MASK != ALLOCATED:
            return "not_allocated"
        p += 1 << (flag & ORDER_MASK)
    if p != end:
        return "not_allocated"
    pg[pfn + 1 : end] = bytes(end - pfn - 1)  # TAIL is 0
    pg[pfn] = ALLOCATED | order
    return None
