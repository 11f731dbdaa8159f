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

PageListener = Callable[[int, int], None]

LATENCY_SAMPLE_EVERY = 16  # time one allocation in 16: cheap, and plenty for a p99


class GuestMemory:
    def __init__(self, mm: BuddyAllocator) -> None:
        self.mm = mm
        self.on_alloc: list[PageListener] = []
        self.on_free: list[PageListener] = []
        self.alloc_latency_ns: list[int] = []
        self._tick = 0

    def alloc(self, order: int = 0) -> int:
        """Allocate and touch a block; -1 when memory is exhausted."""
        self._tick += 1
        if self._tick % LATENCY_SAMPLE_EVERY == 0:
            t0 = time.perf_counter_ns()
            pfn = self.mm.alloc(order)
            self.alloc_latency_ns.append(time.perf_counter_ns() - t0)
            if len(self.alloc_latency_ns) > 200_000:
                del self.alloc_latency_ns[:100_000]
        else:
            pfn = self.mm.alloc(order)
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
        why = self.mm.alloc_at(pfn, order)
        if why is None:
            for listener in self.on_alloc:
                listener(pfn, order)
        return why
