"""The buddy's list operations, apart from its allocation path: merging a block
into the free lists (``__free_one_page``), the per-CPU lists' refill and drain
(``rmqueue_pcplist``, ``free_pcppages_bulk``, ``drain_all_pages``), and the
isolation free page reporting and hinting use (``__isolate_free_page``,
``__putback_isolated_page``). BuddyAllocator (buddy.py) is built on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from guest.mm import fallback
from guest.mm.constants import (
    ALLOCATED,
    FREE,
    ISOLATED,
    MAX_ORDER,
    MIGRATE_MOVABLE,
    ORDER_MASK,
    PAGEBLOCK_ORDER,
    PCP,
    REPORTED,
    STATE_MASK,
    TAIL,
)
from guest.mm.pcp import THP_PINDEX, order_to_pindex
from guest.mm.zone import Zone
from virtqueue.contract import ram_size_problem

NotifyFree = Callable[[Zone, int], None]
_FREE_OR_REPORTED = FREE | REPORTED


class AllocatorError(Exception):
    """Misuse of the allocator that the kernel would BUG on."""


@dataclass(frozen=True)
class BlockInfo:
    pfn: int
    order: int
    state: str  # "allocated" | "free" | "isolated" | "pcp"
    reported: bool


def _state_name(flag: int) -> str:
    s = flag & STATE_MASK
    if s == ALLOCATED:
        return "allocated"
    if s == ISOLATED:
        return "isolated"
    if s == FREE:
        return "free"
    if s == PCP:
        return "pcp"
    return "tail"


def check_ram_size(ram_bytes: int) -> None:
    problem = ram_size_problem(ram_bytes)
    if problem is not None:
        raise AllocatorError(problem)


def _misuse(op: str, pfn: int, order: int, flag: int, want: int) -> AllocatorError:
    if flag < 0:
        return AllocatorError(f"{op} of pfn {pfn:#x}: outside guest RAM")
    if flag == TAIL:
        return AllocatorError(f"{op} of pfn {pfn:#x}: not the head of a block")
    state = _state_name(flag)
    if flag & STATE_MASK != want:
        return AllocatorError(f"{op} of pfn {pfn:#x}: block is {state}, not {_state_name(want)}")
    return AllocatorError(
        f"{op} of pfn {pfn:#x} with order {order}: block has order {flag & ORDER_MASK}"
    )


class BuddyLists:
    """Merging, per-CPU drains and isolation over the state BuddyAllocator sets up."""

    pg: bytearray
    pageblock_mt: bytearray
    zones: list[Zone]
    nr_pages: int
    fallbacks: int
    last_freed: int
    _zone_of_block: list[Zone]
    _hook: NotifyFree | None
    _notify_order: int

    def _rmqueue_pcplist(self, zone: Zone, order: int, mt: int) -> int:
        """rmqueue_pcplist(): the list's first page, refilled from the buddy when empty."""
        pcp = zone.pcp
        pcp.free_factor >>= 1
        lst = pcp.lists[order_to_pindex(mt, order)]
        if not lst:
            batch = pcp.batch
            if batch > 1:
                batch = max(batch >> order, 2)
            # rmqueue_bulk(): blocks taken one by one, added at the tail.
            pg = self.pg
            flag = PCP | order
            for _ in range(batch):
                pfn = fallback.rmqueue(self, zone, order, mt)
                if pfn < 0:
                    break
                pg[pfn] = flag
                lst.append(pfn)
            added = len(lst) << order
            zone.nr_free_pages -= added
            pcp.count += added
            if not lst:
                return -1
        pcp.count -= 1 << order
        return lst.popleft()

    def _free_one_page(self, zone: Zone, pfn: int, order: int, mt: int) -> None:
        """__free_one_page() with FPI_NONE: merge, head or tail, then the hook."""
        pg = self.pg
        areas = zone.free_area
        pbmt = self.pageblock_mt
        zone.nr_free_pages += 1 << order
        while order < MAX_ORDER:
            buddy = pfn ^ (1 << order)
            if pg[buddy] | REPORTED != _FREE_OR_REPORTED | order:
                break
            fl = areas[order].list_of(buddy, pbmt[buddy >> PAGEBLOCK_ORDER])
            if fl.head.pop(buddy, 1) is not None:
                del fl.tail[buddy]
            if buddy < pfn:
                pg[pfn] = TAIL
                pfn = buddy
            else:
                pg[buddy] = TAIL
            order += 1
        pg[pfn] = FREE | order
        fl = areas[order].free_list[mt]
        # buddy_merge_likely(): not near the top order, and the block this one would
        # form with its buddy has its own buddy free: likely to merge soon, so keep
        # it at the tail, away from allocations.
        higher = pfn & ~(1 << order)
        if order < MAX_ORDER - 1 and pg[higher ^ (2 << order)] | REPORTED == _FREE_OR_REPORTED | (
            order + 1
        ):
            fl.tail[pfn] = None
        else:
            fl.head[pfn] = None
        if order >= self._notify_order:
            self.last_freed = pfn
            self._hook(zone, order)  # type: ignore[misc]

    def free_pcppages_bulk(self, zone: Zone, count: int, pindex: int) -> None:
        """free_pcppages_bulk(): ``count`` pages from the lists, round-robin from the
        list after ``pindex`` (the one just freed to goes first), oldest first."""
        pcp = zone.pcp
        count = min(pcp.count, count)
        lists = pcp.lists
        n = len(lists)
        pbmt = self.pageblock_mt
        pindex -= 1
        empty = 0
        while count > 0 and empty < n:
            pindex = (pindex + 1) % n
            lst = lists[pindex]
            if not lst:
                empty += 1
                continue
            empty = 0
            order = PAGEBLOCK_ORDER if pindex == THP_PINDEX else pindex // 3
            size = 1 << order
            while count > 0 and lst:
                pfn = lst.pop()
                count -= size
                pcp.count -= size
                self.pg[pfn] = ALLOCATED | order  # what __free_one_page takes
                mt = pbmt[pfn >> PAGEBLOCK_ORDER] if pindex == THP_PINDEX else pindex % 3
                self._free_one_page(zone, pfn, order, mt)

    def drain_all_pages(self) -> int:
        """drain_all_pages(): every per-CPU page back to the buddy; returns how many."""
        total = 0
        for zone in self.zones:
            n = zone.pcp.count
            if n:
                self.free_pcppages_bulk(zone, n, 0)
                total += n
        return total

    def _merge_and_add_tail(self, zone: Zone, pfn: int, order: int) -> int:
        """__free_one_page() for a put-back: merge, add at the tail, no hook
        (FPI_SKIP_REPORT_NOTIFY | FPI_TO_TAIL), onto the pageblock's migratetype's
        list (__putback_isolated_page). Returns the merged block's head."""
        pg = self.pg
        areas = zone.free_area
        pbmt = self.pageblock_mt
        mt = pbmt[pfn >> PAGEBLOCK_ORDER]
        zone.nr_free_pages += 1 << order
        while order < MAX_ORDER:
            buddy = pfn ^ (1 << order)
            # The buddy is free (reported or not) at exactly this order.
            if pg[buddy] | REPORTED != _FREE_OR_REPORTED | order:
                break
            fl = areas[order].list_of(buddy, pbmt[buddy >> PAGEBLOCK_ORDER])
            if fl.head.pop(buddy, 1) is not None:
                del fl.tail[buddy]
            if buddy < pfn:
                pg[pfn] = TAIL
                pfn = buddy
            else:
                pg[buddy] = TAIL
            order += 1
        # A merged block starts unreported (the kernel clears PageReported when a
        # page leaves the free list).
        pg[pfn] = FREE | order
        areas[order].free_list[mt].tail[pfn] = None
        return pfn

    # ---- isolation (page_reporting / page hinting) ---------------------------------

    def isolate(self, pfn: int, order: int) -> None:
        """Take a free block of exactly ``order`` off its free list; nothing can allocate it."""
        flag = self.pg[pfn] if 0 <= pfn < self.nr_pages else -1
        if flag | REPORTED != _FREE_OR_REPORTED | order:
            raise _misuse("isolate", pfn, order, flag, FREE)
        zone = self._zone_of_block[pfn >> MAX_ORDER]
        pbmt = self.pageblock_mt
        fl = zone.free_area[order].list_of(pfn, pbmt[pfn >> PAGEBLOCK_ORDER])
        fl.remove(pfn)
        self.pg[pfn] = ISOLATED | order
        zone.nr_free_pages -= 1 << order
        zone.nr_isolated_pages += 1 << order
        # A block of at least half a pageblock makes its pageblocks movable
        # (__isolate_free_page): it is all free, so any type may have it.
        if order >= PAGEBLOCK_ORDER - 1:
            for block in range(
                pfn >> PAGEBLOCK_ORDER, (pfn + (1 << order) - 1 >> PAGEBLOCK_ORDER) + 1
            ):
                pbmt[block] = MIGRATE_MOVABLE

    def isolate_free(self, pfn: int, order: int) -> bool:
        """__isolate_free_page(): isolate unless that would breach the zone's min watermark.

        The kernel obeys watermarks "as if the page was being allocated", with an
        order-0 check against a raised mark: the zone must hold more than
        ``wmark_min + 2**order`` free pages. False (nothing changed) otherwise.
        """
        zone = self._zone_of_block[pfn >> MAX_ORDER] if 0 <= pfn < self.nr_pages else None
        if zone is not None and zone.nr_free_pages <= zone.wmark_min + (1 << order):
            return False
        self.isolate(pfn, order)
        return True

    def putback(self, pfn: int, order: int, to_tail: bool = True) -> int:
        """Return an isolated block to the buddy: merging allowed, the hook not called.

        Returns the head pfn of the block it ended up in. ``to_tail=False`` adds at
        the head (still without the hook).
        """
        flag = self.pg[pfn] if 0 <= pfn < self.nr_pages else -1
        if flag != ISOLATED | order:
            raise _misuse("putback", pfn, order, flag, ISOLATED)
        zone = self._zone_of_block[pfn >> MAX_ORDER]
        zone.nr_isolated_pages -= 1 << order
        head = self._merge_and_add_tail(zone, pfn, order)
        if to_tail:
            return head
        fl = zone.free_area[self.pg[head] & ORDER_MASK].list_of(
            head, self.pageblock_mt[head >> PAGEBLOCK_ORDER]
        )
        fl.remove(head)
        fl.add_head(head)
        return head

    def mark_reported(self, pfn: int, order: int) -> bool:
        """Set PageReported on a free block if it is still free at ``order``."""
        if self.pg[pfn] == FREE | order:
            self.pg[pfn] = FREE | REPORTED | order
            return True
        return False
