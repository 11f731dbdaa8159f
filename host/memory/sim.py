"""The simulated ledger: per guest, which frames the host holds.

Each frame is one of:
  ABSENT    never touched since boot, or discarded with MADV_DONTNEED: the host
            holds nothing; the next touch is a fault that brings a zeroed page
  RESIDENT  the host holds the page
  LAZY      MADV_FREE'd: still resident until the host needs the memory; reused
            before reclaim, it costs nothing

With ``--host-memory`` a guest's frames live in the host's memory model instead
(``ModelRam`` over ``host/memory/hostmem.py``: its ledger adds SWAPPED, and an
LRU, swap and an OOM killer across guests); without it nothing here changes.

A guest's RAM starts ABSENT, as a fresh VM's untouched memory does: its RSS on
the host grows as it touches pages. No page fault crosses the wire, so the
guest tells the host (Touched messages) which frames it touched again.

The ledger is sparse, as the memory it models is: one byte per frame, kept in
chunks of CHUNK frames that are allocated when the guest first touches one of
their frames (an untouched chunk is one shared chunk of ABSENT frames) and kept
until the session ends. A 64 GiB guest that touched nothing costs its index (32
KiB), not the 16 MiB a flat ledger took at once (1,024 such sessions were 16 GiB
from one client). The ledgers are real host memory, charged against the host's
memory limit (``SimBackend.ledger_bytes``): with a limit set, a new guest, or a
touch that needs a new chunk, past it is refused (ENOMEM), and lazily freed
frames are reclaimed to make room for them as for any other memory.
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Iterator, Sequence
from typing import cast

from host.memory.base import Evictions, GuestRam, MemoryBackend
from host.memory.hostmem import GuestMemory, HostMemory, TouchOutcome
from virtqueue.contract import PAGE_SIZE

ABSENT = 0
RESIDENT = 1
LAZY = 2
LAZY_RANGES_COMPACT_AT = 1 << 20  # ranges remembered before stale ones are dropped
_RESIDENT, _LAZY, _ABSENT = bytes([RESIDENT]), bytes([LAZY]), bytes([ABSENT])
# Frames per chunk: 4096 (16 MiB of guest RAM), so a chunk is one 4 KiB host page,
# and any block (at most 1024 frames, aligned) lies within one chunk.
CHUNK_SHIFT = 12
CHUNK = 1 << CHUNK_SHIFT
_MASK = CHUNK - 1
# What a session costs before its guest touches anything, charged with the chunks:
# its objects (SESSION_BYTES) and its ledger's index (INDEX_BYTES a chunk). Measured
# with 1,024 sessions of 64 GiB: 34 KiB each, 32 KiB of it the index
# (tests/unit/host/memory/test_sim_sparse.py).
SESSION_BYTES = 4 << 10
INDEX_BYTES = 8
# A chunk's cost to the host: its frames and the bytearray's header.
CHUNK_BYTES = CHUNK + 64
# Zero and resident frames for clearing or filling a piece without allocating
# (views: no copy).
_ZEROS = memoryview(bytes(CHUNK))
_ONES = memoryview(_RESIDENT * CHUNK)
# Where a guest has touched nothing its index holds this one shared chunk of ABSENT
# frames, so the hot paths read every chunk alike (counting in it finds nothing
# held, so nothing writes to it). It is bytes: a write would raise, never corrupt
# every guest's ledger at once.
_UNTOUCHED = cast(bytearray, bytes(CHUNK))


def _pieces(pfn: int, n: int) -> Iterator[tuple[int, int, int]]:
    """(chunk index, offset in it, frames) of the frames pfn..pfn+n, chunk by chunk."""
    end = pfn + n
    while pfn < end:
        off = pfn & _MASK
        k = min(CHUNK - off, end - pfn)
        yield pfn >> CHUNK_SHIFT, off, k
        pfn += k


def _base_bytes(nr_pages: int) -> int:
    """What a ledger of ``nr_pages`` frames costs before anything is touched."""
    return SESSION_BYTES + INDEX_BYTES * -(-nr_pages // CHUNK)


class SimRam(GuestRam):
    def __init__(self, backend: SimBackend, guest_id: str, nr_pages: int, page_size: int) -> None:
        self.backend = backend
        self.guest_id = guest_id
        self.nr_pages = nr_pages
        self.page_size = page_size
        # Chunk index -> its frames; _UNTOUCHED where the guest has touched nothing.
        self.chunks: list[bytearray] = [_UNTOUCHED] * -(-nr_pages // CHUNK)
        self.touched_chunks = 0
        self.resident = 0  # RESIDENT + LAZY
        self.lazy = 0
        self.released = False
        self.lazy_entries = 0  # its ranges in the backend's lazy_ranges (see forget)

    @property
    def ledger_bytes(self) -> int:
        """What this ledger costs the host now."""
        if self.released:
            return 0
        return _base_bytes(self.nr_pages) + self.touched_chunks * CHUNK_BYTES

    def frames(self, pfn: int, n: int) -> bytes:
        """The states of frames pfn..pfn+n (for tests and checks: it copies)."""
        return b"".join(bytes(self.chunks[i][o : o + k]) for i, o, k in _pieces(pfn, n))

    def discard(self, ranges: Sequence[tuple[int, int]]) -> int:
        if self.backend.discard_mode == "free":
            self._discard_lazily(ranges)
            return 0
        # MADV_DONTNEED: every held frame (resident or lazy) goes. Counted in
        # place (bytearray.count with bounds copies nothing) and cleared from a
        # shared zero buffer, so a range costs two C calls. A block never crosses
        # a chunk (CHUNK is a multiple of the largest), so the piece-by-piece walk
        # is for other callers' ranges only. A chunk all ABSENT again is kept:
        # dropping it would cost a scan per range on the hot path, and the guest
        # touched it once, so its ledger is charged until the session ends.
        released = 0
        lazy = 0
        chunks = self.chunks
        zeros = _ZEROS
        limit = 0 if self.released else self.nr_pages
        for pfn, n in ranges:
            end = pfn + n
            if end > limit:  # the device never sends such a range; clip, as slices do
                end = limit
                n = end - pfn
            if n <= 0 or pfn < 0:  # (negative: only from in-process callers)
                continue
            off = pfn & _MASK
            e = off + n
            if e > CHUNK:  # not a block: the walk, piece by piece
                r, lz = self._drop_span(pfn, n)
                released += r
                lazy += lz
                continue
            c = chunks[pfn >> CHUNK_SHIFT]
            held = n - c.count(ABSENT, off, e)
            if held:
                if self.lazy:
                    lazy += c.count(LAZY, off, e)
                c[off:e] = zeros[:n]
                released += held
        if released:
            self.resident -= released
            self.lazy -= lazy
            self.backend.resident -= released
        return released

    def _drop_span(self, pfn: int, n: int) -> tuple[int, int]:
        """Clear frames pfn..pfn+n across chunks: (frames released, of them lazy)."""
        released = lazy = 0
        for idx, off, k in _pieces(pfn, n):
            c = self.chunks[idx]
            e = off + k
            held = k - c.count(ABSENT, off, e)
            if held:
                lazy += c.count(LAZY, off, e)
                c[off:e] = _ZEROS[:k]
                released += held
        return released, lazy

    def _discard_lazily(self, ranges: Sequence[tuple[int, int]]) -> None:
        """MADV_FREE: resident frames become lazily free, nothing leaves yet."""
        limit = 0 if self.released else self.nr_pages
        for pfn, n in ranges:
            start, end = max(pfn, 0), min(pfn + n, limit)
            freed = 0
            for idx, off, k in _pieces(start, end - start):
                c = self.chunks[idx]
                e = off + k
                res = c.count(RESIDENT, off, e)
                if res:
                    c[off:e] = c[off:e].replace(_RESIDENT, _LAZY)
                    freed += res
            if freed:
                self.lazy += freed
                self.backend.note_lazy(self, start, end - start)

    def touched(self, runs: Sequence[tuple[int, int]]) -> int:
        if self.released:
            return 0
        chunks = self.chunks
        pieces: list[tuple[int, int, int]] = []
        for pfn, n in runs:
            off = pfn & _MASK
            if off + n <= CHUNK:
                pieces.append((pfn >> CHUNK_SHIFT, off, n))
            else:
                pieces.extend(_pieces(pfn, n))
        # The chunks this batch needs, charged before anything changes: a batch the
        # host's memory cannot record is refused whole.
        new = {i for i, _, _ in pieces if chunks[i] is _UNTOUCHED}
        if new:
            self.backend.charge(len(new) * CHUNK_BYTES)
            for i in new:
                chunks[i] = bytearray(min(CHUNK, self.nr_pages - (i << CHUNK_SHIFT)))
            self.touched_chunks += len(new)
            self.backend.ledger_bytes += len(new) * CHUNK_BYTES
        brought = 0
        lazy_gone = 0
        ones = _ONES
        for idx, off, k in pieces:
            c = chunks[idx]
            e = off + k
            absent = c.count(ABSENT, off, e)
            lz = c.count(LAZY, off, e)
            if absent or lz:
                c[off:e] = ones[:k]
                brought += absent
                lazy_gone += lz
        self.resident += brought
        self.lazy -= lazy_gone
        self.backend.resident += brought
        self.backend.pressure()
        return brought

    def has_lazy(self, pfn: int, n: int) -> bool:
        return any(self.chunks[i].find(_LAZY, o, o + k) >= 0 for i, o, k in _pieces(pfn, n))

    def reclaim_range(self, pfn: int, n: int) -> int:
        got = 0
        for idx, off, k in _pieces(pfn, n):
            c = self.chunks[idx]
            e = off + k
            lz = c.count(LAZY, off, e)
            if lz:
                c[off:e] = c[off:e].replace(_LAZY, _ABSENT)
                got += lz
        if got:
            self.lazy -= got
            self.resident -= got
            self.backend.resident -= got
        return got

    def resident_pages(self) -> int:
        return self.resident

    def lazily_free_pages(self) -> int:
        return self.lazy

    def release(self) -> None:
        if not self.released:
            self.backend.resident -= self.resident
            self.backend.ledger_bytes -= self.ledger_bytes
            self.resident = self.lazy = 0
            self.chunks = []
            self.touched_chunks = 0
            self.released = True
            self.backend.forget(self)


class ModelRam(GuestRam):
    """A guest's RAM in the host's memory model (``--host-memory``): the model's
    ledger (2 MiB chunks, four states) holds its frames."""

    def __init__(self, backend: SimBackend, memory: GuestMemory, page_size: int) -> None:
        self.backend = backend
        self.memory = memory
        self.guest_id = memory.guest_id
        self.nr_pages = memory.nr_pages
        self.page_size = page_size

    def discard(self, ranges: Sequence[tuple[int, int]]) -> int:
        return self.memory.discard(ranges, lazily=self.backend.discard_mode == "free")

    def touched(self, runs: Sequence[tuple[int, int]]) -> int:
        return self.memory.touched(runs).brought

    def touch(self, runs: Sequence[tuple[int, int]]) -> TouchOutcome:
        return self.memory.touched(runs)

    def take_evicted(self) -> Evictions:
        return Evictions(self.memory.take_evicted(), 0)  # books only: nothing to move

    def swapped_pages(self) -> int:
        return self.memory.swapped

    @property
    def killed(self) -> str:
        return "" if self.memory.killed is None else self.memory.killed.reason()

    def faults(self) -> tuple[int, int]:
        return self.memory.major_faults, self.memory.minor_faults

    def stall_seconds(self) -> float:
        return self.memory.stall_seconds

    def resident_pages(self) -> int:
        return self.memory.resident

    def lazily_free_pages(self) -> int:
        return self.memory.lazy

    def release(self) -> None:
        self.memory.release()


class SimBackend(MemoryBackend):
    """Ledgers for every guest, with a host capacity that reclaims lazy frames first;
    or, given a ``model``, the host's memory model holds every guest's frames."""

    name = "sim"

    def __init__(
        self,
        discard_mode: str = "dontneed",
        capacity_pages: int | None = None,
        model: HostMemory | None = None,
    ) -> None:
        self.discard_mode = discard_mode
        self.capacity_pages = capacity_pages
        self.model = model
        # (--memory-limit and --host-memory are not given together: HostConfig.)
        self.resident = 0
        self.reclaimed = 0
        # What the ledgers themselves cost (real host memory): sessions and chunks.
        self.ledger_bytes = 0
        # Oldest lazily freed ranges first: reclaim takes from the left.
        self.lazy_ranges: deque[tuple[SimRam, int, int]] = deque()
        self._compact_at = LAZY_RANGES_COMPACT_AT
        self._stale = 0  # entries of ended sessions still in lazy_ranges (at most)

    def overhead_bytes(self) -> int:
        return self.ledger_bytes

    def _ledger_pages(self) -> int:
        return -(-self.ledger_bytes // PAGE_SIZE)

    def charge(self, nbytes: int) -> None:
        """Room for ``nbytes`` more of ledger, or OSError(ENOMEM) when the host's memory
        limit cannot hold them (lazily freed frames are reclaimed first to make room)."""
        if self.capacity_pages is None:
            return
        need = -(-(self.ledger_bytes + nbytes) // PAGE_SIZE)
        if need > self.capacity_pages:
            raise OSError(errno.ENOMEM, "the ledgers would pass the host's memory limit")
        over = self.resident + need - self.capacity_pages
        if over > 0:
            self.reclaim(over)

    def attach(
        self, guest_id: str, nr_pages: int, page_size: int, host_memory: bool = False
    ) -> GuestRam:
        if self.model is not None:
            # A guest that does not follow the model is held, never swapped (hostmem.py).
            return ModelRam(self, self.model.attach(guest_id, nr_pages, host_memory), page_size)
        base = _base_bytes(nr_pages)
        self.charge(base)
        ram = SimRam(self, guest_id, nr_pages, page_size)
        self.ledger_bytes += base
        return ram

    def note_lazy(self, ram: SimRam, pfn: int, n: int) -> None:
        """Remember a lazily freed range for reclaim, oldest first.

        Only a host with a memory limit ever reclaims, so only it keeps the list
        (an unlimited host kept it forever: ~100 bytes a range, never drained).
        The list is compacted when it outgrows the lazily free memory it covers.
        """
        if self.capacity_pages is None:
            return
        self.lazy_ranges.append((ram, pfn, n))
        ram.lazy_entries += 1
        if len(self.lazy_ranges) > self._compact_at:
            self.lazy_ranges = deque(
                (r, p, k) for r, p, k in self.lazy_ranges if not r.released and r.has_lazy(p, k)
            )
            # Next time at twice what is left (at least the floor): a list whose
            # ranges all still hold lazy frames is not rebuilt on every later range
            # (it was, once past the floor: quadratic, and a guest could drive it).
            self._compact_at = max(LAZY_RANGES_COMPACT_AT, 2 * len(self.lazy_ranges))
            self._stale = 0

    def forget(self, ram: SimRam) -> None:
        """A session ended: its ranges have nothing left to reclaim. The list is
        rebuilt without ended guests' ranges only once they are half of it (a pass
        over the whole list per ended session was quadratic); reclaim skips them
        meanwhile."""
        self._stale += ram.lazy_entries
        ram.lazy_entries = 0
        if self._stale and 2 * self._stale >= len(self.lazy_ranges):
            self.lazy_ranges = deque(e for e in self.lazy_ranges if not e[0].released)
            self._stale = 0

    def pressure(self) -> None:
        """If over capacity (the guests' frames and the ledgers together), reclaim
        lazily freed frames, oldest first."""
        if self.capacity_pages is None:
            return
        over = self.resident + self._ledger_pages() - self.capacity_pages
        if over > 0:
            self.reclaim(over)

    def resident_pages_total(self) -> int:
        if self.model is not None:
            return self.model.used  # the guests' frames and their VMMs' overhead
        return self.resident  # kept up to date by every discard and touch

    def reclaim(self, want_pages: int) -> int:
        got = 0
        while got < want_pages and self.lazy_ranges:
            ram, pfn, n = self.lazy_ranges.popleft()
            if not ram.released:
                got += ram.reclaim_range(pfn, n)
        self.reclaimed += got
        return got
