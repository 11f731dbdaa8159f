"""Zones and their free areas.

A free list must support add at head, add at tail, delete of any block, pop from
the head and iteration in list order, all cheaply: the merged reporting design
puts reported blocks back at the tail and rotates lists, so order matters.

A FreeArea keeps its list as two insertion-ordered dicts: ``head`` holds blocks
added at the head (most recent last), ``tail`` holds blocks added at the tail
(oldest first). The list in order is ``reversed(head)`` then ``tail``. Popping
the head is ``head.popitem()``; when ``head`` is empty, ``tail`` is flipped into
``head`` once (each block moves at most once per insertion, so this is O(1)
amortised). Dicts, not sets: a set that has had many deletions gets slow to
drain (its popping scans past dummy slots; measured when this was written).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from guest.mm.constants import DMA32_LIMIT, DMA_LIMIT, MAX_RAM, NR_ORDERS, PAGE_SHIFT


class FreeArea:
    """One order's free list of a zone; ``nr_free`` is its length in blocks."""

    __slots__ = ("head", "order", "tail")

    def __init__(self, order: int) -> None:
        self.order = order
        self.head: dict[int, None] = {}
        self.tail: dict[int, None] = {}

    @property
    def nr_free(self) -> int:
        return len(self.head) + len(self.tail)

    def __len__(self) -> int:
        return len(self.head) + len(self.tail)

    def __contains__(self, pfn: int) -> bool:
        return pfn in self.head or pfn in self.tail

    def __iter__(self) -> Iterator[int]:
        """Blocks in list order, head first."""
        yield from reversed(self.head)
        yield from self.tail

    def add_head(self, pfn: int) -> None:
        self.head[pfn] = None

    def add_tail(self, pfn: int) -> None:
        self.tail[pfn] = None

    def remove(self, pfn: int) -> None:
        if self.head.pop(pfn, 1) is not None:
            del self.tail[pfn]

    def pop_head(self) -> int:
        """Remove and return the first block; KeyError when empty."""
        if not self.head:
            self._flip()
        return self.head.popitem()[0]

    def first(self) -> int | None:
        if self.head:
            return next(reversed(self.head))
        if self.tail:
            return next(iter(self.tail))
        return None

    def _flip(self) -> None:
        # Move the tail part into the head part, reversed, so popitem() yields the
        # tail part's first block first.
        if self.tail:
            self.head = dict.fromkeys(reversed(self.tail))
            self.tail = {}

    def rotate_to_front(self, pfn: int) -> None:
        """Move the blocks before ``pfn`` to the tail, so the list starts at ``pfn``.

        The kernel's ``list_rotate_to_front``: the next reporting pass resumes
        where this one stopped. Costs one move per block passed over, which the
        walk that passed over them already paid for.
        """
        if pfn not in self:
            raise KeyError(pfn)
        while True:
            first = self.pop_head()
            if first == pfn:
                self.head[first] = None
                return
            self.tail[first] = None


@dataclass(eq=False)
class Zone:
    """A physically contiguous range of page frames with its own free areas."""

    index: int
    name: str
    start_pfn: int
    end_pfn: int  # exclusive
    free_area: list[FreeArea] = field(
        default_factory=lambda: [FreeArea(o) for o in range(NR_ORDERS)]
    )
    nr_isolated_pages: int = 0
    # Watermarks in pages, set by guest.mm.watermarks.
    wmark_min: int = 0
    wmark_low: int = 0
    wmark_high: int = 0

    @property
    def nr_free_pages(self) -> int:
        """Free pages, counted from the free lists when asked: keeping a running
        count cost two attribute updates on every alloc and free, the hot path,
        while it is read only by watermark checks and statistics."""
        return sum(len(a) << a.order for a in self.free_area)

    @property
    def managed_pages(self) -> int:
        return self.end_pfn - self.start_pfn

    def contains(self, pfn: int) -> bool:
        return self.start_pfn <= pfn < self.end_pfn

    def __repr__(self) -> str:
        return f"Zone({self.name}, pfn {self.start_pfn:#x}-{self.end_pfn:#x})"


def make_zones(ram_bytes: int) -> list[Zone]:
    """DMA (< 16 MiB), DMA32 (< 4 GiB) and Normal, as far as ``ram_bytes`` reaches."""
    zones: list[Zone] = []
    bounds = [
        ("DMA", 0, DMA_LIMIT),
        ("DMA32", DMA_LIMIT, DMA32_LIMIT),
        ("Normal", DMA32_LIMIT, MAX_RAM),
    ]
    for name, lo, hi in bounds:
        start = lo >> PAGE_SHIFT
        end = min(hi, ram_bytes) >> PAGE_SHIFT
        if end > start:
            zones.append(Zone(index=len(zones), name=name, start_pfn=start, end_pfn=end))
    return zones
