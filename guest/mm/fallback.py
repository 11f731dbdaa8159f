"""Taking a block off the buddy lists, with the migratetype fallback (Linux 6.1
mm/page_alloc.c: __rmqueue, __rmqueue_smallest, __rmqueue_fallback).

An allocation takes the smallest free block of its own migratetype and splits
it (``expand``: the unused halves go to the head of that type's lists). When
its type has none, it takes from another type in the kernel's fallback order,
largest block first (so a whole pageblock changes hands rather than a
fragment), and may steal the rest of that pageblock (steal_suitable_fallback):
its free pages move to the new type's lists, and the pageblock takes the new
type when at least half of it is free or already of that kind.

Departures, for what the model does not track: pages of an allocated block
have no mobility of their own, so "already of that kind" counts none
(``alike_pages`` 0: only free pages decide); no watermark boost, no
ALLOC_NOFRAGMENT (guests over 4 GiB in the kernel fall back to DMA32 before
fragmenting Normal), no highatomic reserves, no CMA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from guest.mm.constants import (
    FREE,
    MAX_ORDER,
    MIGRATE_MOVABLE,
    MIGRATE_RECLAIMABLE,
    MIGRATE_UNMOVABLE,
    ORDER_MASK,
    PAGEBLOCK_ORDER,
    STATE_MASK,
    TAIL,
)

if TYPE_CHECKING:
    from guest.mm.lists import BuddyLists as BuddyAllocator
    from guest.mm.zone import FreeArea, Zone

# fallbacks[] of mm/page_alloc.c.
FALLBACKS = {
    MIGRATE_UNMOVABLE: (MIGRATE_RECLAIMABLE, MIGRATE_MOVABLE),
    MIGRATE_MOVABLE: (MIGRATE_RECLAIMABLE, MIGRATE_UNMOVABLE),
    MIGRATE_RECLAIMABLE: (MIGRATE_UNMOVABLE, MIGRATE_MOVABLE),
}
PAGEBLOCK_PAGES = 1 << PAGEBLOCK_ORDER


def rmqueue(mm: BuddyAllocator, zone: Zone, order: int, mt: int) -> int:
    """__rmqueue(): a block of ``order`` off the lists (its pg byte is the caller's to
    set), or -1. The zone's free count is the caller's to lower."""
    pfn = rmqueue_smallest(mm, zone, order, mt)
    if pfn < 0 and rmqueue_fallback(mm, zone, order, mt):
        pfn = rmqueue_smallest(mm, zone, order, mt)
    return pfn


def rmqueue_smallest(mm: BuddyAllocator, zone: Zone, order: int, mt: int) -> int:
    areas = zone.free_area
    pg = mm.pg
    o = order
    while o <= MAX_ORDER:
        fl = areas[o].free_list[mt]
        if fl.head:
            pfn = fl.head.popitem()[0]
        elif fl.tail:
            pfn = fl.pop_head()
        else:
            o += 1
            continue
        # expand(): hand the upper halves back, largest first, at the list head.
        while o > order:
            o -= 1
            upper = pfn + (1 << o)
            pg[upper] = FREE | o
            areas[o].free_list[mt].head[upper] = None
        return pfn
    return -1


def can_steal_fallback(order: int, start_mt: int) -> bool:
    """can_steal_fallback(): a large request, or one of the kinds that fragment."""
    return order >= PAGEBLOCK_ORDER // 2 or start_mt in (MIGRATE_RECLAIMABLE, MIGRATE_UNMOVABLE)


def find_suitable_fallback(area: FreeArea, order: int, mt: int) -> tuple[int, bool]:
    """find_suitable_fallback(..., only_stealable=false): (type, can_steal) or (-1, False)."""
    if not area.nr_free:
        return -1, False
    for fallback_mt in FALLBACKS[mt]:
        if not area.empty(fallback_mt):
            return fallback_mt, can_steal_fallback(order, mt)
    return -1, False


def rmqueue_fallback(mm: BuddyAllocator, zone: Zone, order: int, mt: int) -> bool:
    """__rmqueue_fallback(): move a block of another type onto ``mt``'s lists."""
    areas = zone.free_area
    found = -1
    can_steal = False
    current = MAX_ORDER
    while current >= order:
        found, can_steal = find_suitable_fallback(areas[current], current, mt)
        if found >= 0:
            break
        current -= 1
    if found < 0:
        return False
    if not can_steal and mt == MIGRATE_MOVABLE and current > order:
        # find_smallest: a movable request takes the smallest fragment instead.
        for current in range(order, MAX_ORDER + 1):
            found, can_steal = find_suitable_fallback(areas[current], current, mt)
            if found >= 0:
                break
    pfn = areas[current].free_list[found].first()
    assert pfn is not None
    mm.fallbacks += 1
    steal_suitable_fallback(mm, zone, pfn, current, found, mt, can_steal)
    return True


def steal_suitable_fallback(
    mm: BuddyAllocator, zone: Zone, pfn: int, order: int, old_mt: int, mt: int, whole: bool
) -> None:
    areas = zone.free_area
    block = pfn >> PAGEBLOCK_ORDER
    if order >= PAGEBLOCK_ORDER:
        # change_pageblock_range(): the whole block is free and becomes this type.
        for b in range(block, block + (1 << (order - PAGEBLOCK_ORDER))):
            mm.pageblock_mt[b] = mt
    elif whole:
        free_pages = move_freepages_block(mm, zone, block, mt)
        if free_pages >= PAGEBLOCK_PAGES // 2:
            mm.pageblock_mt[block] = mt
        if free_pages:
            return
    # single_page: just this block changes lists.
    areas[order].free_list[old_mt].remove(pfn)
    areas[order].free_list[mt].add_head(pfn)


def move_freepages_block(mm: BuddyAllocator, zone: Zone, block: int, mt: int) -> int:
    """move_freepages_block(): every free block of the pageblock onto ``mt``'s lists
    (at the tail, move_to_free_list); returns the free pages moved."""
    pg = mm.pg
    areas = zone.free_area
    pfn = block << PAGEBLOCK_ORDER
    end = pfn + PAGEBLOCK_PAGES
    moved = 0
    while pfn < end:
        flag = pg[pfn]
        if flag == TAIL:
            break  # inside a block larger than the pageblock: none of it is free here
        order = flag & ORDER_MASK
        if flag & STATE_MASK == FREE:
            area = areas[order]
            fl = area.list_of(pfn, mm.pageblock_mt[block])
            fl.remove(pfn)
            area.free_list[mt].add_tail(pfn)
            moved += 1 << order
        pfn += 1 << order
    return moved
