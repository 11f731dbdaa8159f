"""The guest's view of its RAM as a workload uses it.

Wraps the buddy allocator with what a workload's pages need beyond bookkeeping:
allocation latency samples, and listeners that see every allocation and free
(the balloon driver uses them to tell the host which discarded frames were
touched again; the shared-memory backend writes and checks page stamps).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from guest.mm.buddy import BuddyAllocator
from guest.mm.constants import MIGRATE_MOVABLE, ORDER_MASK, PAGE_ALLOC_COSTLY_ORDER
from guest.mm.exact import alloc_at, containing_block, reshape_allocated

PageListener = Callable[[int, int], None]

# The kernel calls the OOM notifiers (out_of_memory) only for allocations of
# PAGE_ALLOC_COSTLY_ORDER or less (mm/page_alloc.c __alloc_pages_may_oom: costly
# orders fail instead).
LATENCY_SAMPLE_EVERY = 16  # time one allocation in 16: cheap, and plenty for a p99


class GuestMemory:
    def __init__(self, mm: BuddyAllocator) -> None:
        self.mm = mm
        self.on_alloc: list[PageListener] = []
        self.on_free: list[PageListener] = []
        # Asked when an allocation fails, each returning pages it freed (the balloon's
        # deflate-on-oom, as Linux's OOM notifier chain): one retry if any were.
        self.on_oom: list[Callable[[], int]] = []
        self.alloc_latency_ns: list[int] = []
        self._tick = 0

    def alloc(self, order: int = 0, migratetype: int = MIGRATE_MOVABLE) -> int:
        """Allocate and touch a block (a workload's pages are movable unless said
        otherwise); -1 when memory is exhausted."""
        self._tick += 1
        if self._tick % LATENCY_SAMPLE_EVERY == 0:
            t0 = time.perf_counter_ns()
            pfn = self.mm.alloc(order, migratetype)
            self.alloc_latency_ns.append(time.perf_counter_ns() - t0)
            if len(self.alloc_latency_ns) > 200_000:
                del self.alloc_latency_ns[:100_000]
        else:
            pfn = self.mm.alloc(order, migratetype)
        if (
            pfn < 0
            and order <= PAGE_ALLOC_COSTLY_ORDER
            and self.on_oom
            and sum(notify() for notify in self.on_oom)
        ):
            pfn = self.mm.alloc(order, migratetype)
        if pfn >= 0:
            for listener in self.on_alloc:
                listener(pfn, order)
        return pfn

    def free(self, pfn: int, order: int = 0) -> None:
        for listener in self.on_free:
            listener(pfn, order)
        self.mm.free(pfn, order)

    def alloc_at(self, pfn: int, order: int) -> str | None:
        """Allocate and touch exactly this block (a replayed trace); None on success,
        else why not (see BuddyAllocator.alloc_at)."""
        why = alloc_at(self.mm, pfn, order)
        if why is None:
            for listener in self.on_alloc:
                listener(pfn, order)
        return why

    def reshape(self, pfn: int, order: int) -> str | None:
        """Make ``[pfn, pfn + 2**order)`` one allocated block (a replayed free of
        another shape; see BuddyAllocator.reshape_allocated). Listeners see the old
        blocks freed and the new ones allocated, so a page checker keyed by block
        keeps every page's contents."""
        if not (self.on_free or self.on_alloc):
            return reshape_allocated(self.mm, pfn, order)
        old, new = self._shapes(pfn, order)
        why = reshape_allocated(self.mm, pfn, order)
        if why is None:
            for block in old:
                for listener in self.on_free:
                    listener(*block)
            for block in new:
                for listener in self.on_alloc:
                    listener(*block)
        return why

    def _shapes(self, pfn: int, order: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The allocated blocks a reshape replaces, and the blocks it makes."""
        mm = self.mm
        end = pfn + (1 << order)
        if not 0 <= pfn < end <= mm.nr_pages:
            return [], []
        head, flag = containing_block(mm, pfn)
        k = flag & ORDER_MASK
        if k > order:  # split_page() of a larger block, then the range joined
            big = range(head, head + (1 << k))
            return [(head, k)], [(p, 0) for p in big if not pfn <= p < end] + [(pfn, order)]
        old = []
        p = pfn
        while p < end:
            k = mm.pg[p] & ORDER_MASK
            old.append((p, k))
            p += 1 << k
        return old, [(pfn, order)]
