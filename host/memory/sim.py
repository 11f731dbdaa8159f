"""The simulated ledger: per guest, which frames the host holds.

Each frame is one of:
  ABSENT    never touched since boot, or discarded with MADV_DONTNEED: the host
            holds nothing; the next touch is a fault that brings a zeroed page
  RESIDENT  the host holds the page
  LAZY      MADV_FREE'd: still resident until the host needs the memory; reused
            before reclaim, it costs nothing

A guest's RAM starts ABSENT, as a fresh VM's untouched memory does: its RSS on
the host grows as it touches pages. No page fault crosses the wire, so the
guest tells the host (Touched messages) which frames it touched again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from host.memory.base import GuestRam, MemoryBackend

ABSENT = 0
RESIDENT = 1
LAZY = 2
LAZY_RANGES_COMPACT_AT = 1 << 20  # ranges remembered before stale ones are dropped
_RESIDENT, _LAZY = bytes([RESIDENT]), bytes([LAZY])
# Zero frames for clearing a discarded range without allocating (a view: no copy).
_ZERO_PAGES = 1 << 10  # the largest block (MAX_ORDER)
_ZEROS = memoryview(bytes(_ZERO_PAGES))


class SimRam(GuestRam):
    def __init__(self, backend: SimBackend, guest_id: str, nr_pages: int, page_size: int) -> None:
        self.backend = backend
        self.guest_id = guest_id
        self.nr_pages = nr_pages
        self.page_size = page_size
        self.frames = bytearray(nr_pages)
        self.resident = 0  # RESIDENT + LAZY
        self.lazy = 0
        self.released = False

    def discard(self, ranges: Sequence[tuple[int, int]]) -> int:
        fr = self.frames
        if self.backend.discard_mode == "free":
            # MADV_FREE: resident frames become lazily free, nothing leaves yet.
            for pfn, n in ranges:
                res = fr.count(RESIDENT, pfn, pfn + n)
                if res:
                    fr[pfn : pfn + n] = fr[pfn : pfn + n].replace(_RESIDENT, _LAZY)
                    self.lazy += res
                    self.backend.note_lazy(self, pfn, n)
            return 0
        # MADV_DONTNEED: every held frame (resident or lazy) goes. Counted in
        # place (bytearray.count with bounds copies nothing) and cleared from a
        # shared zero buffer, so a range costs two C calls.
        released = 0
        lazy = 0
        zeros = _ZEROS
        limit = len(fr)  # 0 once released: nothing is held any more
        for pfn, n in ranges:
            end = pfn + n
            if end > limit:  # the device never sends such a range; clip, as slices do
                end = limit
                n = end - pfn
                if n <= 0:
                    continue
            held = n - fr.count(ABSENT, pfn, end)
            if held:
                if self.lazy:
                    lazy += fr.count(LAZY, pfn, end)
                # (a longer range than the buffer would resize the ledger: never)
                fr[pfn:end] = zeros[:n] if n <= _ZERO_PAGES else bytes(n)
                released += held
        if released:
            self.resident -= released
            self.lazy -= lazy
            self.backend.resident -= released
        return released

    def touched(self, runs: Sequence[tuple[int, int]]) -> int:
        fr = self.frames
        brought = 0
        for pfn, n in runs:
            seg = fr[pfn : pfn + n]
            absent = seg.count(ABSENT)
            lz = seg.count(LAZY)
            if absent or lz:
                fr[pfn : pfn + n] = bytes([RESIDENT]) * n
                self.resident += absent
                self.lazy -= lz
                self.backend.resident += absent
                brought += absent
        self.backend.pressure()
        return brought

    def reclaim_range(self, pfn: int, n: int) -> int:
        fr = self.frames
        seg = fr[pfn : pfn + n]
        lz = seg.count(LAZY)
        if lz:
            fr[pfn : pfn + n] = seg.replace(bytes([LAZY]), bytes([ABSENT]))
            self.lazy -= lz
            self.resident -= lz
            self.backend.resident -= lz
        return lz

    def resident_pages(self) -> int:
        return self.resident

    def lazily_free_pages(self) -> int:
        return self.lazy

    def release(self) -> None:
        if not self.released:
            self.backend.resident -= self.resident
            self.resident = self.lazy = 0
            self.frames = bytearray(0)
            self.released = True
            self.backend.forget(self)


class SimBackend(MemoryBackend):
    """Ledgers for every guest, with a host capacity that reclaims lazy frames first."""

    name = "sim"

    def __init__(self, discard_mode: str = "dontneed", capacity_pages: int | None = None) -> None:
        self.discard_mode = discard_mode
        self.capacity_pages = capacity_pages
        self.resident = 0
        self.reclaimed = 0
        # Oldest lazily freed ranges first: reclaim takes from the left.
        self.lazy_ranges: deque[tuple[SimRam, int, int]] = deque()

    def attach(self, guest_id: str, nr_pages: int, page_size: int) -> GuestRam:
        return SimRam(self, guest_id, nr_pages, page_size)

    def note_lazy(self, ram: SimRam, pfn: int, n: int) -> None:
        """Remember a lazily freed range for reclaim, oldest first.

        Only a host with a memory limit ever reclaims, so only it keeps the list
        (an unlimited host kept it forever: ~100 bytes a range, never drained).
        The list is compacted when it outgrows the lazily free memory it covers.
        """
        if self.capacity_pages is None:
            return
        self.lazy_ranges.append((ram, pfn, n))
        if len(self.lazy_ranges) > LAZY_RANGES_COMPACT_AT:
            self.lazy_ranges = deque(
                (r, p, k)
                for r, p, k in self.lazy_ranges
                if not r.released and LAZY in r.frames[p : p + k]
            )

    def forget(self, ram: SimRam) -> None:
        """A session ended: its ranges have nothing left to reclaim."""
        if any(r is ram for r, _, _ in self.lazy_ranges):
            self.lazy_ranges = deque(e for e in self.lazy_ranges if e[0] is not ram)

    def pressure(self) -> None:
        """If over capacity, reclaim lazily freed frames, oldest first."""
        if self.capacity_pages is None or self.resident <= self.capacity_pages:
            return
        self.reclaim(self.resident - self.capacity_pages)

    def resident_pages_total(self) -> int:
        return self.resident  # kept up to date by every discard and touch

    def reclaim(self, want_pages: int) -> int:
        got = 0
        while got < want_pages and self.lazy_ranges:
            ram, pfn, n = self.lazy_ranges.popleft()
            if not ram.released:
                got += ram.reclaim_range(pfn, n)
        self.reclaimed += got
        return got
