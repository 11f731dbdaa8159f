"""The buddy allocator.

Kernel names are kept so the code can be held against mm/page_alloc.c:
``alloc`` splits the smallest larger block (``expand``), ``free`` merges with
the buddy ``pfn ^ (1 << order)`` as far as it can and then calls the hook
``notify_free(zone, order)`` with the final order, unless the free is a
put-back of isolated pages (the kernel's FPI_SKIP_REPORT_NOTIFY).

Every page is exactly one of allocated, free or isolated. The per-page flag
byte array ``pg`` records it at each block's head page (see constants.py).
Misuse (freeing what is not allocated, a wrong order, isolating what is not
free) raises AllocatorError before anything is changed: the kernel would BUG,
we refuse and keep the lists intact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from guest.mm.constants import (
    ALLOCATED,
    FREE,
    ISOLATED,
    MAX_BLOCK_PAGES,
    MAX_ORDER,
    NR_ORDERS,
    ORDER_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    REPORTED,
    STATE_MASK,
    TAIL,
)
from guest.mm.watermarks import set_watermarks
from guest.mm.zone import Zone, make_zones
from virtqueue.contract import ram_size_problem

NotifyFree = Callable[[Zone, int], None]

_NEVER = NR_ORDERS + 1  # a hook order no block reaches: the hook is off
_FREE_OR_REPORTED = FREE | REPORTED


class AllocatorError(Exception):
    """Misuse of the allocator that the kernel would BUG on."""


@dataclass(frozen=True)
class BlockInfo:
    pfn: int
    order: int
    state: str  # "allocated" | "free" | "isolated"
    reported: bool


def _state_name(flag: int) -> str:
    s = flag & STATE_MASK
    if s == ALLOCATED:
        return "allocated"
    if s == ISOLATED:
        return "isolated"
    if s == FREE:
        return "free"
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


class BuddyAllocator:
    """A buddy allocator over ``ram_bytes`` of guest RAM split into DMA/DMA32/Normal."""

    def __init__(self, ram_bytes: int, min_free_kbytes: int | None = None) -> None:
        check_ram_size(ram_bytes)
        self.ram_bytes = ram_bytes
        self.nr_pages = ram_bytes >> PAGE_SHIFT
        self.pg = bytearray(self.nr_pages)
        self.zones = make_zones(ram_bytes)
        # Zone of each top-order block: zone boundaries are top-order aligned, so a
        # block (and its buddies) never straddles two zones.
        zone_of_block: list[Zone] = []
        for zone in self.zones:
            zone_of_block.extend([zone] * ((zone.end_pfn - zone.start_pfn) // MAX_BLOCK_PAGES))
        self._zone_of_block = zone_of_block
        # Allocation falls back from the highest zone down, like the kernel's zonelist.
        self.zonelist = list(reversed(self.zones))
        self.min_free_kbytes = set_watermarks(self.zones, min_free_kbytes)
        # notify_free hook: called after merging when the final order >= notify_order.
        # The order test is inline here, as the kernel's page_reporting_notify_free()
        # is a static inline that returns early below page_reporting_order.
        self._hook: NotifyFree | None = None
        self._notify_order = _NEVER
        # Only failures are counted here (off the hot path); the workload layer
        # counts operations, as metrics read the core from outside.
        self.alloc_failures = 0
        # Populate from top-order blocks: 16 M single-page frees would take a minute.
        top = MAX_ORDER | FREE
        for zone in self.zones:
            area = zone.free_area[MAX_ORDER]
            pg = self.pg
            for pfn in range(zone.start_pfn, zone.end_pfn, MAX_BLOCK_PAGES):
                pg[pfn] = top
                area.tail[pfn] = None

    # ---- hook -------------------------------------------------------------------

    def set_hook(self, hook: NotifyFree | None, min_order: int = 0) -> None:
        """Install ``notify_free(zone, order)``, called for merged blocks of order >= min_order."""
        self._hook = hook
        self._notify_order = _NEVER if hook is None else max(0, min_order)

    @property
    def hook(self) -> NotifyFree | None:
        return self._hook

    @property
    def hook_order(self) -> int:
        """The smallest merged order the hook is called for."""
        return self._notify_order

    # ---- lookups ------------------------------------------------------------------

    def zone_of(self, pfn: int) -> Zone:
        if not 0 <= pfn < self.nr_pages:
            raise AllocatorError(f"pfn {pfn:#x} is outside guest RAM (0-{self.nr_pages - 1:#x})")
        return self._zone_of_block[pfn >> MAX_ORDER]

    def block_at(self, pfn: int) -> BlockInfo:
        """The block whose head is ``pfn``; AllocatorError if pfn is not a block head."""
        flag = self.pg[pfn]
        if flag == TAIL:
            raise AllocatorError(f"pfn {pfn:#x} is not the head of a block")
        return BlockInfo(pfn, flag & ORDER_MASK, _state_name(flag), bool(flag & REPORTED))

    def is_free(self, pfn: int, order: int) -> bool:
        """True if ``pfn`` heads a free (possibly reported) block of exactly ``order``."""
        return self.pg[pfn] | REPORTED == _FREE_OR_REPORTED | order

    def is_reported(self, pfn: int, order: int) -> bool:
        return self.pg[pfn] == _FREE_OR_REPORTED | order

    # ---- allocation -----------------------------------------------------------------

    def alloc(self, order: int = 0) -> int:
        """Allocate a block of 2**order pages; returns its pfn, or -1 when none is free."""
        if not 0 <= order <= MAX_ORDER:
            raise AllocatorError(f"bad order {order}: must be 0..{MAX_ORDER}")
        pg = self.pg
        for zone in self.zonelist:
            areas = zone.free_area
            o = order
            while o <= MAX_ORDER:
                area = areas[o]
                head = area.head
                if head:
                    pfn = head.popitem()[0]
                elif area.tail:
                    pfn = area.pop_head()
                else:
                    o += 1
                    continue
                # expand(): hand the upper halves back, largest first.
                while o > order:
                    o -= 1
                    upper = pfn + (1 << o)
                    pg[upper] = FREE | o
                    areas[o].head[upper] = None
                pg[pfn] = ALLOCATED | order
                return pfn
        self.alloc_failures += 1
        return -1

    def free(self, pfn: int, order: int = 0) -> None:
        """Free an allocated block, merge it with free buddies, then notify the hook."""
        pg = self.pg
        try:
            flag = pg[pfn]
        except (IndexError, TypeError):
            raise AllocatorError(f"free of pfn {pfn!r}: outside guest RAM") from None
        if flag != ALLOCATED | order or pfn < 0:
            raise _misuse("free", pfn, order, flag if pfn >= 0 else -1, ALLOCATED)
        zone = self._zone_of_block[pfn >> MAX_ORDER]
        areas = zone.free_area
        # __free_one_page(), inlined: this is the hot path (put-backs take
        # _merge_and_add_tail, which differs only in where the block goes).
        while order < MAX_ORDER:
            buddy = pfn ^ (1 << order)
            if pg[buddy] | REPORTED != _FREE_OR_REPORTED | order:
                break
            area = areas[order]
            if area.head.pop(buddy, 1) is not None:
                del area.tail[buddy]
            if buddy < pfn:
                pg[pfn] = TAIL
                pfn = buddy
            else:
                pg[buddy] = TAIL
            order += 1
        pg[pfn] = FREE | order
        areas[order].head[pfn] = None
        if order >= self._notify_order:
            self._hook(zone, order)  # type: ignore[misc]

    def _merge_and_add_tail(self, zone: Zone, pfn: int, order: int) -> int:
        """__free_one_page() for a put-back: merge, add at the tail, no hook
        (FPI_SKIP_REPORT_NOTIFY | FPI_TO_TAIL). Returns the merged block's head."""
        pg = self.pg
        areas = zone.free_area
        while order < MAX_ORDER:
            buddy = pfn ^ (1 << order)
            # The buddy is free (reported or not) at exactly this order.
            if pg[buddy] | REPORTED != _FREE_OR_REPORTED | order:
                break
            area = areas[order]
            if area.head.pop(buddy, 1) is not None:
                del area.tail[buddy]
            if buddy < pfn:
                pg[pfn] = TAIL
                pfn = buddy
            else:
                pg[buddy] = TAIL
            order += 1
        # A merged block starts unreported (the kernel clears PageReported when a
        # page leaves the free list).
        pg[pfn] = FREE | order
        areas[order].tail[pfn] = None
        return pfn

    # ---- isolation (page_reporting / page hinting) ---------------------------------

    def isolate(self, pfn: int, order: int) -> None:
        """Take a free block of exactly ``order`` off its free list; nothing can allocate it."""
        flag = self.pg[pfn] if 0 <= pfn < self.nr_pages else -1
        if flag | REPORTED != _FREE_OR_REPORTED | order:
            raise _misuse("isolate", pfn, order, flag, FREE)
        zone = self._zone_of_block[pfn >> MAX_ORDER]
        zone.free_area[order].remove(pfn)
        self.pg[pfn] = ISOLATED | order
        zone.nr_isolated_pages += 1 << order

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
        area = zone.free_area[self.pg[head] & ORDER_MASK]
        area.remove(head)
        area.add_head(head)
        return head

    def mark_reported(self, pfn: int, order: int) -> bool:
        """Set PageReported on a free block if it is still free at ``order``."""
        if self.pg[pfn] == FREE | order:
            self.pg[pfn] = FREE | REPORTED | order
            return True
        return False

    # ---- statistics -----------------------------------------------------------------

    @property
    def nr_free_pages(self) -> int:
        return sum(z.nr_free_pages for z in self.zones)

    @property
    def nr_isolated_pages(self) -> int:
        return sum(z.nr_isolated_pages for z in self.zones)

    @property
    def free_bytes(self) -> int:
        return self.nr_free_pages * PAGE_SIZE

    @property
    def isolated_bytes(self) -> int:
        return self.nr_isolated_pages * PAGE_SIZE

    @property
    def allocated_pages(self) -> int:
        return self.nr_pages - self.nr_free_pages - self.nr_isolated_pages

    def free_pages_at_or_above(self, order: int) -> int:
        """Free pages sitting in blocks of order >= ``order`` (what hinting can report)."""
        return sum(
            zone.free_area[o].nr_free << o for zone in self.zones for o in range(order, NR_ORDERS)
        )

    def blocks(self) -> Iterator[BlockInfo]:
        """Every block in pfn order (walks heads; O(number of pages))."""
        pg = self.pg
        pfn = 0
        n = self.nr_pages
        while pfn < n:
            flag = pg[pfn]
            if flag == TAIL:
                raise AllocatorError(f"pfn {pfn:#x} should head a block but is a tail page")
            order = flag & ORDER_MASK
            yield BlockInfo(pfn, order, _state_name(flag), bool(flag & REPORTED))
            pfn += 1 << order
