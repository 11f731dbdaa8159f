"""The buddy allocator, as Linux 6.1's mm/page_alloc.c.

Kernel names are kept so the code can be held against it:

- ``alloc(order, migratetype)`` is get_page_from_freelist: zone by zone from
  the highest, a zone is used only while its free pages stay above the low
  watermark plus its lowmem_reserve (zone_watermark_fast); then rmqueue: the
  per-CPU list for the orders it keeps (guest/mm/pcp.py), else the smallest
  free block of the migratetype's lists split down (``expand``), else a
  fallback to another type's lists (guest/mm/fallback.py). When no zone passes
  at the low mark the slow path retries at the min mark, then drains the
  per-CPU lists (drain_all_pages, as direct reclaim does) and tries once more.
- ``free(pfn, order)`` is free_the_page: the per-CPU orders go onto the list
  (free_unref_page) and reach the buddy when a drain takes them; others go to
  ``__free_one_page``: merge with the buddy ``pfn ^ (1 << order)`` as far as it
  can, add to the tail when buddy_merge_likely() else the head, then call the
  hook ``notify_free(zone, order)`` with the final order — unless the free is a
  put-back of isolated pages (FPI_SKIP_REPORT_NOTIFY).

Every page is exactly one of allocated, free or isolated. The per-page flag
byte array ``pg`` records it at each block's head page (see constants.py).
Misuse (freeing what is not allocated, a wrong order, isolating what is not
free) raises AllocatorError before anything is changed: the kernel would BUG,
we refuse and keep the lists intact.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from guest.mm import fallback
from guest.mm.constants import (
    ALLOCATED,
    FREE,
    MAX_BLOCK_PAGES,
    MAX_ORDER,
    MIGRATE_MOVABLE,
    NR_ORDERS,
    ORDER_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    PAGEBLOCK_ORDER,
    PCP,
    REPORTED,
    TAIL,
)
from guest.mm.layout import aligned_blocks, boot_layout, free_ranges
from guest.mm.lists import (
    AllocatorError,
    BlockInfo,
    BuddyLists,
    NotifyFree,
    _misuse,
    _state_name,
    check_ram_size,
)
from guest.mm.model import AllocatorModel, MemoryModel
from guest.mm.pcp import THP_PINDEX
from guest.mm.watermarks import set_watermarks
from guest.mm.zone import Zone, make_zones

_NEVER = NR_ORDERS + 1  # a hook order no block reaches: the hook is off
_FREE_OR_REPORTED = FREE | REPORTED


__all__ = [
    "AllocatorError",
    "BlockInfo",
    "BuddyAllocator",
    "NotifyFree",
    "boot_written_free",
    "check_ram_size",
]


class BuddyAllocator(BuddyLists):
    """A buddy allocator over ``ram_bytes`` of guest RAM split into DMA/DMA32/Normal.

    ``model`` says which of the kernel's rules run (guest/mm/model.py; the guest's
    MemoryConfig, or BARE_MEMORY for the plain buddy); ``min_free_kbytes``
    overrides its figure.
    """

    def __init__(
        self,
        ram_bytes: int,
        min_free_kbytes: int | None = None,
        model: MemoryModel | None = None,
    ) -> None:
        check_ram_size(ram_bytes)
        # The guest's boot, on the monotonic clock (asyncio's and uvloop's loop.time()
        # read it too): its kernel timers count jiffies from here (timer_wheel.py).
        self.booted_at = time.monotonic()
        model = model if model is not None else AllocatorModel()
        self.model = model
        self.ram_bytes = ram_bytes
        self.nr_pages = ram_bytes >> PAGE_SHIFT
        self.pg = bytearray(self.nr_pages)
        # get_pageblock_migratetype(): every pageblock starts movable (memmap_init).
        self.pageblock_mt = bytearray([MIGRATE_MOVABLE]) * (self.nr_pages >> PAGEBLOCK_ORDER)
        self.zones = make_zones(ram_bytes)
        # Zone of each top-order block: zone boundaries are top-order aligned, so a
        # block (and its buddies) never straddles two zones.
        zone_of_block: list[Zone] = []
        for zone in self.zones:
            zone_of_block.extend([zone] * ((zone.end_pfn - zone.start_pfn) // MAX_BLOCK_PAGES))
        self._zone_of_block = zone_of_block
        # Allocation falls back from the highest zone down, like the kernel's zonelist;
        # user allocations may use every zone (highest_zoneidx: the last one).
        self.zonelist = list(reversed(self.zones))
        self._highest = len(self.zones) - 1
        # notify_free hook: called after merging when the final order >= notify_order.
        # The order test is inline here, as the kernel's page_reporting_notify_free()
        # is a static inline that returns early below page_reporting_order.
        self._hook: NotifyFree | None = None
        self._notify_order = _NEVER
        # The head of the block the hook is called for (the kernel's hook gets only
        # the order; v10's bitmap hook needs the page, which its hook was given).
        self.last_freed = -1
        # Only failures are counted here (off the hot path); the workload layer
        # counts operations, as metrics read the core from outside.
        self.alloc_failures = 0
        self.kswapd_wakeups = 0  # allocations that missed the low watermark
        self.fallbacks = 0  # allocations served from another migratetype's lists
        self._pcp = model.pcp
        self._watermarks = model.watermarks
        layout = boot_layout(model.layout, self.nr_pages, model.kernel_at >> PAGE_SHIFT)
        self.reserved = layout.reserved
        # Ranges the boot wrote (its free pages are held by the host all the same).
        self.boot_written = layout.written
        # memblock_free_all keeps back what the end of boot frees: khugepaged sets
        # the watermarks (and so the per-CPU lists' high) without those pages.
        self._populate(layout.reserved + layout.freed_late)
        self.min_free_kbytes = set_watermarks(
            self.zones, min_free_kbytes or model.min_free_kbytes, model.thp, model.cpus
        )
        for zone in self.zones:
            zone.pcp.enabled = model.pcp
        self.boot_held = [
            (self.alloc(0, mt), mt) for mt, pages in layout.allocated for _ in range(pages)
        ]
        free_reserved_area(self, layout.freed_late)

    def _populate(self, reserved: tuple[tuple[int, int], ...]) -> None:
        """memblock_free_all(): RAM outside the reservations goes to the buddy in the
        largest aligned blocks (__free_pages_memory), at the tail; reserved pages
        stay allocated (PageReserved) for good."""
        pg = self.pg
        for start, end in reserved:
            pg[start:end] = bytes([ALLOCATED]) * (end - start)
        for start, end in free_ranges(self.nr_pages, reserved):
            for pfn, order in aligned_blocks(start, end):
                zone = self._zone_of_block[pfn >> MAX_ORDER]
                pg[pfn] = FREE | order
                zone.free_area[order].free_list[MIGRATE_MOVABLE].tail[pfn] = None
                zone.nr_free_pages += 1 << order
        for zone in self.zones:
            zone.managed_pages = zone.spanned_pages - sum(
                max(0, min(e, zone.end_pfn) - max(s, zone.start_pfn)) for s, e in reserved
            )

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

    def alloc(self, order: int = 0, migratetype: int = MIGRATE_MOVABLE) -> int:
        """Allocate a block of 2**order pages; returns its pfn, or -1 when none can be."""
        if not 0 <= order <= MAX_ORDER:
            raise AllocatorError(f"bad order {order}: must be 0..{MAX_ORDER}")
        pfn = self._get_page_from_freelist(order, migratetype, True)
        if pfn < 0:
            pfn = self._alloc_slowpath(order, migratetype)
        if pfn >= 0:
            self.pg[pfn] = ALLOCATED | order
        return pfn

    def _get_page_from_freelist(self, order: int, mt: int, low: bool) -> int:
        size = 1 << order
        for zone in self.zonelist:
            if self._watermarks:
                mark = zone.wmark_low if low else zone.wmark_min
                # zone_watermark_fast(): free pages less the request's, above the mark
                # and what the zone keeps back from allocations that may go higher.
                if zone.nr_free_pages - size + 1 <= mark + zone.lowmem_reserve[self._highest]:
                    continue
                # __zone_watermark_ok: a high-order request also needs a buddy block
                # of that order or larger (the per-CPU lists do not count).
                if order and not any(zone.free_area[o].nr_free for o in range(order, NR_ORDERS)):
                    continue
            if self._pcp and (order <= 3 or order == PAGEBLOCK_ORDER):
                pfn = self._rmqueue_pcplist(zone, order, mt)
            else:
                pfn = fallback.rmqueue(self, zone, order, mt)
                if pfn >= 0:
                    zone.nr_free_pages -= size
            if pfn >= 0:
                return pfn
        return -1

    def _alloc_slowpath(self, order: int, mt: int) -> int:
        """__alloc_pages_slowpath(), simplified: kswapd is woken (counted: the model
        has no page cache to reclaim), the min watermark tried, then the per-CPU
        lists drained as a failed direct reclaim does, and the min mark once more.
        No compaction and no OOM kill here: GuestMemory's OOM notifiers come next."""
        self.kswapd_wakeups += 1
        pfn = self._get_page_from_freelist(order, mt, False)
        if pfn < 0 and self.drain_all_pages():
            pfn = self._get_page_from_freelist(order, mt, False)
        if pfn < 0:
            self.alloc_failures += 1
        return pfn

    def free(self, pfn: int, order: int = 0) -> None:
        """Free an allocated block: onto the per-CPU list for the orders it keeps,
        else merged into the buddy at once (then the hook)."""
        pg = self.pg
        try:
            flag = pg[pfn]
        except (IndexError, TypeError):
            raise AllocatorError(f"free of pfn {pfn!r}: outside guest RAM") from None
        if flag != ALLOCATED | order or pfn < 0:
            raise _misuse("free", pfn, order, flag if pfn >= 0 else -1, ALLOCATED)
        zone = self._zone_of_block[pfn >> MAX_ORDER]
        mt = self.pageblock_mt[pfn >> PAGEBLOCK_ORDER]
        if self._pcp and (order <= 3 or order == PAGEBLOCK_ORDER):
            # free_unref_page_commit()
            pcp = zone.pcp
            pindex = THP_PINDEX if order > 3 else 3 * order + mt
            pcp.lists[pindex].appendleft(pfn)
            pg[pfn] = PCP | order
            pcp.count += 1 << order
            free_high = pcp.free_factor and 0 < order <= 3
            high = 0 if free_high else pcp.high
            if pcp.count >= high:
                self.free_pcppages_bulk(zone, pcp.nr_pcp_free(high, bool(free_high)), pindex)
            return
        self._free_one_page(zone, pfn, order, mt)

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
    def boot_pages(self) -> int:
        """Pages the guest's kernel holds from boot (the layout's reservations and
        boot's allocations): not the workload's."""
        return sum(e - s for s, e in self.reserved) + len(self.boot_held)

    @property
    def nr_pcp_pages(self) -> int:
        """Free pages waiting on per-CPU lists (not in the buddy)."""
        return sum(z.pcp.count for z in self.zones)

    @property
    def allocated_pages(self) -> int:
        return self.nr_pages - self.nr_free_pages - self.nr_isolated_pages - self.nr_pcp_pages

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


def free_reserved_area(mm: BuddyAllocator, ranges: tuple[tuple[int, int], ...]) -> None:
    """free_reserved_area(): the kernel image's gaps and init memory, page by page
    (free_reserved_page -> __free_page: onto the per-CPU list), each counted managed
    again (adjust_managed_page_count)."""
    for start, end in ranges:
        for pfn in range(start, end):
            mm.zone_of(pfn).managed_pages += 1
            mm.free(pfn, 0)


def boot_written_free(mm: BuddyAllocator) -> Iterator[tuple[int, int]]:
    """The free, unreported pages of the ranges the boot wrote (the layout's
    ``written``), as aligned (pfn, order) blocks: the host holds them though the
    guest has no use for them, until a report returns them."""
    written = mm.boot_written
    if not written:
        return
    for b in mm.blocks():
        if b.state not in ("free", "pcp") or b.reported:
            continue
        end = b.pfn + (1 << b.order)
        for start, stop in written:
            lo, hi = max(b.pfn, start), min(end, stop)
            if lo < hi:
                yield from aligned_blocks(lo, hi)
