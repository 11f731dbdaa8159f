"""Per-CPU page lists (struct per_cpu_pages, Linux 6.1 mm/page_alloc.c).

Frees of the orders ``pcp_allowed_order`` accepts (0..PAGE_ALLOC_COSTLY_ORDER,
and THP's pageblock order) go onto the freeing CPU's list first; they reach
the buddy lists — where they merge and where free page reporting's hook sees
them — only when the lists pass ``high`` and ``free_pcppages_bulk`` drains
some. Allocations of those orders take from the lists, refilled ``batch`` at a
time (``rmqueue_bulk``). Pages on a list are free but not in the buddy: the
zone's free count (NR_FREE_PAGES) leaves them out.

One list per (order, migratetype) for the low orders, one for THP
(``order_to_pindex``). A list is a deque: ``list_add`` is ``appendleft``, the
allocation side takes ``list_first_entry`` (``popleft``), a drain takes
``list_last_entry`` (``pop``), and ``rmqueue_bulk`` adds at the tail.

A low-order list's index says the migratetype its pages go back to; the THP
list is shared, and a drained THP goes to its pageblock's type at the drain
(the kernel records the type at the free, get_pcppage_migratetype: they differ
only if a fallback or an isolation retyped the pageblock meanwhile).

The guest's work runs on one CPU, so each zone keeps the lists of that CPU; the
other CPUs only divide the zone's low watermark when ``high`` is sized
(zone_highsize), as they do in the kernel.
"""

from __future__ import annotations

from collections import deque

from guest.mm.constants import MIGRATE_PCPTYPES, PAGE_ALLOC_COSTLY_ORDER, PAGEBLOCK_ORDER

# CONFIG_PCP_BATCH_SCALE_MAX: the most times nr_pcp_free() doubles a drain (batch
# << 5 = 2,016 pages at batch 63). "mm: restrict the pcp batch scale factor to
# avoid too long latency" (upstream 52166607ecc9, v6.7) came to 6.1 stable in
# August 2024 (6.1.104); the reference guest's kernel has it — Debian's
# /boot/config-6.1.0-57-amd64 sets 5 — and an ftrace of its 65,536-page free
# (record.py --trace-drains: traced-drains-small.json) drains 63, 126, ... 2,016,
# then 2,016 each time.
PCP_BATCH_SCALE_MAX = 5

NR_LOWORDER_PCP_LISTS = MIGRATE_PCPTYPES * (PAGE_ALLOC_COSTLY_ORDER + 1)
THP_PINDEX = NR_LOWORDER_PCP_LISTS
NR_PCP_LISTS = NR_LOWORDER_PCP_LISTS + 1


def pcp_allowed_order(order: int) -> bool:
    """pcp_allowed_order(): the low orders, and THP's."""
    return order <= PAGE_ALLOC_COSTLY_ORDER or order == PAGEBLOCK_ORDER


def order_to_pindex(migratetype: int, order: int) -> int:
    if order > PAGE_ALLOC_COSTLY_ORDER:
        return THP_PINDEX
    return MIGRATE_PCPTYPES * order + migratetype


def pindex_to_order(pindex: int) -> int:
    return PAGEBLOCK_ORDER if pindex == THP_PINDEX else pindex // MIGRATE_PCPTYPES


class PerCpuPages:
    """One CPU's lists for one zone: ``count`` pages on them, drained past ``high``."""

    __slots__ = ("batch", "count", "enabled", "free_factor", "high", "lists")

    def __init__(self) -> None:
        self.lists: list[deque[int]] = [deque() for _ in range(NR_PCP_LISTS)]
        self.count = 0
        self.high = 0
        self.batch = 1
        # Doubles the drain size for each drain with no allocation in between, up
        # to PCP_BATCH_SCALE_MAX times (nr_pcp_free); halved by each allocation
        # (rmqueue_pcplist).
        self.free_factor = 0
        self.enabled = False

    def set_high_and_batch(self, high: int, batch: int) -> None:
        """zone_set_pageset_high_and_batch()."""
        self.high = high
        self.batch = batch

    def nr_pcp_high(self, free_high: bool) -> int:
        """nr_pcp_high(): 0 (drain everything) while freeing low high-order pages
        without allocating. (ZONE_RECLAIM_ACTIVE is not modelled: no kswapd.)"""
        return 0 if free_high else self.high

    def nr_pcp_free(self, high: int, free_high: bool) -> int:
        """nr_pcp_free(): how many pages a drain frees."""
        if free_high:
            return self.count
        batch = self.batch
        if high < batch:
            return 1
        max_nr_free = high - batch
        n = batch << self.free_factor
        if n < max_nr_free and self.free_factor < PCP_BATCH_SCALE_MAX:
            self.free_factor += 1
        return max(batch, min(n, max_nr_free))

    def find(self, pfn: int) -> int:
        """The index of the list holding ``pfn``, or -1."""
        for i, lst in enumerate(self.lists):
            if pfn in lst:
                return i
        return -1
