"""Zones, their free areas and their per-CPU page lists.

A zone's ``free_area[order]`` holds one free list per migratetype
(``free_list[MIGRATE_UNMOVABLE | MIGRATE_MOVABLE | MIGRATE_RECLAIMABLE]``) and
their total, ``nr_free``, as the kernel's struct free_area does.

A free list must support add at head, add at tail, delete of any block, pop from
the head and iteration in list order, all cheaply: the merged reporting design
puts reported blocks back at the tail and rotates lists, so order matters.

A FreeList keeps its list as two insertion-ordered dicts: ``head`` holds blocks
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

from guest.mm.constants import (
    DMA32_LIMIT,
    DMA_LIMIT,
    MAX_RAM,
    MIGRATE_PCPTYPES,
    NR_ORDERS,
    PAGE_SHIFT,
)
from guest.mm.pcp import PerCpuPages


class FreeList:
    """One (order, migratetype) free list of a zone."""

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


class FreeArea:
    """One order of a zone: a free list per migratetype. ``nr_free`` counts blocks
    over all of them (the kernel's ``free_area.nr_free``, which reporting's budget
    reads); iteration visits the lists in migratetype order."""

    __slots__ = ("free_list", "order")

    def __init__(self, order: int) -> None:
        self.order = order
        self.free_list = [FreeList(order) for _ in range(MIGRATE_PCPTYPES)]

    @property
    def nr_free(self) -> int:
        return sum(len(fl.head) + len(fl.tail) for fl in self.free_list)

    def __len__(self) -> int:
        return self.nr_free

    def __contains__(self, pfn: int) -> bool:
        return any(pfn in fl for fl in self.free_list)

    def __iter__(self) -> Iterator[int]:
        for fl in self.free_list:
            yield from fl

    def first(self) -> int | None:
        """The first block of the first non-empty list, in migratetype order."""
        for fl in self.free_list:
            pfn = fl.first()
            if pfn is not None:
                return pfn
        return None

    def list_of(self, pfn: int, hint: int) -> FreeList:
        """The list holding ``pfn``, trying migratetype ``hint`` (its pageblock's) first:
        a block sits on another type's list only after a fallback moved it."""
        fl = self.free_list[hint]
        if pfn in fl.head or pfn in fl.tail:
            return fl
        for fl in self.free_list:
            if pfn in fl.head or pfn in fl.tail:
                return fl
        raise KeyError(pfn)

    def empty(self, mt: int) -> bool:
        fl = self.free_list[mt]
        return not (fl.head or fl.tail)


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
    # Pages on the buddy free lists (NR_FREE_PAGES: not those on per-CPU lists, not
    # isolated ones). Kept as a running count: every allocation checks a watermark
    # against it, as get_page_from_freelist does.
    nr_free_pages: int = 0
    # Pages the buddy allocator manages: spanned minus holes and boot reservations
    # (zone_managed_pages); set by the boot layout.
    managed_pages: int = 0
    # Watermarks in pages, set by guest.mm.watermarks.
    wmark_min: int = 0
    wmark_low: int = 0
    wmark_high: int = 0
    # lowmem_reserve[j]: pages this zone keeps back from allocations whose highest
    # usable zone is j (setup_per_zone_lowmem_reserve).
    lowmem_reserve: list[int] = field(default_factory=list)
    # The running CPU's per-CPU lists (guest/mm/pcp.py).
    pcp: PerCpuPages = field(default_factory=PerCpuPages)

    @property
    def spanned_pages(self) -> int:
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
            zones.append(
                Zone(
                    index=len(zones), name=name, start_pfn=start, end_pfn=end,
                    managed_pages=end - start,
                )
            )  # fmt: skip
    return zones
