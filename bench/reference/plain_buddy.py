"""The yardstick for the allocator: the simplest buddy allocator that works.

One dict of free block heads per order, nothing else: no zones, no page
flags, no misuse checks, no counters, no hook, no isolation. Allocation pops
from the smallest order that has a block and splits; freeing merges while the
buddy is in the dict. What pagehint's BuddyAllocator costs on top of this is
what its checks, zones and bookkeeping cost.
"""

from __future__ import annotations

MAX_ORDER = 10


class PlainBuddy:
    def __init__(self) -> None:
        self.free_lists: list[dict[int, None]] = [{} for _ in range(MAX_ORDER + 1)]

    @classmethod
    def same_state(cls, free_blocks: list[list[int]]) -> PlainBuddy:
        """A buddy whose free blocks are ``free_blocks[order]`` (list order kept)."""
        b = cls()
        for order, heads in enumerate(free_blocks):
            b.free_lists[order] = dict.fromkeys(heads)
        return b

    def alloc(self, order: int = 0) -> int:
        free_lists = self.free_lists
        o = order
        while o <= MAX_ORDER:
            fl = free_lists[o]
            if fl:
                pfn = fl.popitem()[0]
                while o > order:
                    o -= 1
                    free_lists[o][pfn + (1 << o)] = None
                return pfn
            o += 1
        return -1

    def free(self, pfn: int, order: int = 0) -> None:
        free_lists = self.free_lists
        while order < MAX_ORDER:
            buddy = pfn ^ (1 << order)
            fl = free_lists[order]
            if buddy not in fl:
                break
            del fl[buddy]
            pfn &= buddy  # the lower of the two
            order += 1
        free_lists[order][pfn] = None
