"""Invariant checker for the buddy allocator, used by tests and --check runs."""

from __future__ import annotations

from guest.mm.buddy import BuddyAllocator
from guest.mm.constants import (
    ALLOCATED,
    FREE,
    ISOLATED,
    MAX_ORDER,
    ORDER_MASK,
    PCP,
    REPORTED,
    STATE_MASK,
    TAIL,
)
from guest.mm.pcp import pindex_to_order


class InvariantError(AssertionError):
    """The allocator's state is inconsistent."""


def check_invariants(mm: BuddyAllocator) -> None:
    """Walk every page and every list; raise InvariantError on the first inconsistency.

    Checks: each page belongs to exactly one block (head flag + zero tails); blocks
    are aligned to their order and inside one zone; free heads are on exactly the
    free list of their zone and order, and every listed block is a free head; no
    two free buddies of the same order both sit on free lists (they would have
    merged); counters match; pages are conserved.
    """
    listed = _listed_blocks(mm)
    on_pcp = _pcp_blocks(mm)
    free_pages = [0] * len(mm.zones)
    isolated_pages = [0] * len(mm.zones)
    pcp_pages = [0] * len(mm.zones)
    total = 0
    pfn = 0
    while pfn < mm.nr_pages:
        zone, state, size = _check_block(mm, pfn, listed.pop(pfn, None))
        if state == FREE:
            free_pages[zone] += size
        elif state == ISOLATED:
            isolated_pages[zone] += size
        elif state == PCP:
            if on_pcp.pop(pfn, None) != (zone, size.bit_length() - 1):
                raise InvariantError(f"per-CPU block {pfn:#x} is not on its zone's list")
            pcp_pages[zone] += size
        total += size
        pfn += size
    if listed:
        bad = next(iter(listed))
        raise InvariantError(f"free list holds {bad:#x}, which does not head a free block")
    if on_pcp:
        bad = next(iter(on_pcp))
        raise InvariantError(f"per-CPU list holds {bad:#x}, which is not a per-CPU block")
    if total != mm.nr_pages:
        raise InvariantError(f"pages not conserved: {total} counted, {mm.nr_pages} in RAM")
    for z in mm.zones:
        if z.nr_free_pages != free_pages[z.index]:
            raise InvariantError(
                f"{z.name}: nr_free_pages {z.nr_free_pages} but {free_pages[z.index]} free"
            )
        if z.pcp.count != pcp_pages[z.index]:
            raise InvariantError(
                f"{z.name}: per-CPU count {z.pcp.count} but {pcp_pages[z.index]} on the lists"
            )
        if z.nr_isolated_pages != isolated_pages[z.index]:
            raise InvariantError(
                f"{z.name}: nr_isolated_pages {z.nr_isolated_pages} "
                f"but {isolated_pages[z.index]} isolated"
            )


def _listed_blocks(mm: BuddyAllocator) -> dict[int, tuple[int, int]]:
    """Every block on a free list: pfn -> (zone index, order); each list sane."""
    listed: dict[int, tuple[int, int]] = {}
    for zone in mm.zones:
        for order, area in enumerate(zone.free_area):
            if area.order != order:
                raise InvariantError(
                    f"{zone.name} free_area[{order}] thinks it is order {area.order}"
                )
            for fl in area.free_list:
                overlap = fl.head.keys() & fl.tail.keys()
                if overlap:
                    raise InvariantError(
                        f"{zone.name} order {order}: {sorted(overlap)[:3]} in both halves"
                    )
            for pfn in area:
                if pfn in listed:
                    raise InvariantError(f"pfn {pfn:#x} on two free lists")
                listed[pfn] = (zone.index, order)
    return listed


def _pcp_blocks(mm: BuddyAllocator) -> dict[int, tuple[int, int]]:
    """Every block on a per-CPU list: pfn -> (zone index, order)."""
    out: dict[int, tuple[int, int]] = {}
    for zone in mm.zones:
        for pindex, lst in enumerate(zone.pcp.lists):
            order = pindex_to_order(pindex)
            for pfn in lst:
                if pfn in out:
                    raise InvariantError(f"pfn {pfn:#x} on two per-CPU lists")
                out[pfn] = (zone.index, order)
    return out


def _check_block(
    mm: BuddyAllocator, pfn: int, where: tuple[int, int] | None
) -> tuple[int, int, int]:
    """The block headed at ``pfn``, checked: (zone index, state, pages)."""
    pg = mm.pg
    flag = pg[pfn]
    if flag == TAIL:
        raise InvariantError(f"pfn {pfn:#x} is a tail page where a block should start")
    state = flag & STATE_MASK
    order = flag & ORDER_MASK
    if order > MAX_ORDER or state not in (FREE, ISOLATED, ALLOCATED, PCP):
        raise InvariantError(f"pfn {pfn:#x} has a bad flag {flag:#x}")
    if flag & REPORTED and state != FREE:
        raise InvariantError(f"pfn {pfn:#x} is reported but not free")
    size = 1 << order
    if pfn & (size - 1):
        raise InvariantError(f"block {pfn:#x} order {order} is misaligned")
    if pfn + size > mm.nr_pages:
        raise InvariantError(f"block {pfn:#x} order {order} runs past the end of RAM")
    zone = mm.zone_of(pfn)
    if not zone.contains(pfn + size - 1):
        raise InvariantError(f"block {pfn:#x} order {order} straddles zone {zone.name}")
    if pg[pfn + 1 : pfn + size].count(0) != size - 1:
        raise InvariantError(f"block {pfn:#x} order {order} has a non-tail page inside it")
    if state == FREE:
        if where != (zone.index, order):
            raise InvariantError(
                f"free block {pfn:#x} order {order} is not on {zone.name}'s order-{order} list"
            )
        if order < MAX_ORDER:
            buddy = pfn ^ size
            bflag = pg[buddy]
            if bflag & STATE_MASK == FREE and bflag & ORDER_MASK == order:
                raise InvariantError(
                    f"free buddies {pfn:#x} and {buddy:#x} of order {order} did not merge"
                )
    elif where is not None:
        kind = {ISOLATED: "isolated", PCP: "per-CPU"}.get(state, "allocated")
        raise InvariantError(f"{kind} block {pfn:#x} is on a free list")
    return zone.index, state, size
