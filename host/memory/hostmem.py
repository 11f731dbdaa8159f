"""The host's own memory: finite RAM, swap, an LRU across guests, and an OOM killer.

Without ``--host-memory`` none of this exists and the host holds whatever its
guests touch (``host/memory/sim.py``). With it, this module is the host's memory
for every guest together, and what the kernel of a KVM host would do with it:

- Granularity: 2 MiB chunks (``CHUNK_PAGES`` = 512 frames). QEMU advises THP on
  guest RAM (system/physmem.c ``ram_block_add`` → ``qemu_madvise(...,
  QEMU_MADV_HUGEPAGE)``), so the host's LRU holds 2 MiB folios, and with
  CONFIG_THP_SWAP (mm/Kconfig, "Swap transparent huge pages in one piece") they
  are swapped out whole. Swap-in is per 4 KiB page (an assumption:
  docs/plans/density-sources.md, "THP swapped out whole").
- One LRU across all guests, least recently *faulted* chunk first. Departure:
  the host sees a guest's access only at a fault (a first touch after a discard
  or an eviction), like a host that never scans accessed bits; the kernel's
  LRU (two lists, or MGLRU's generations) also promotes what is referenced
  while mapped. A strict LRU in fault order approximates both
  (density-sources.md, "what coldest means").
- Reclaim when the guests' frames and the VMMs' overhead pass the host's
  memory: lazily freed (MADV_FREE) frames first, oldest lazily freed chunk
  first, with no I/O (mm/swap.c ``lru_lazyfree``: they go to the inactive list
  and are dropped early; mm/vmscan.c ``shrink_folio_list``: "Lazyfree folio
  could be freed directly"). Then the coldest chunk's resident frames are swapped
  out, ``swap_out_cost`` each, counted host-wide and charged as delay to the guest
  whose fault forced them (direct reclaim; kswapd's asynchronous writeback is not
  modelled, so this is the pessimistic side: density-sources.md, "swap-out cost").
- A touch of a swapped frame is a major fault: ``swap_in_cost`` per frame, the
  frame resident again (which may evict others). A touch of an absent frame is a
  minor fault (zero fill), free. A touch of a lazily freed frame still held is
  reused without a fault (mm/rmap.c ``try_to_unmap_one``: a redirtied lazyfree
  folio is remapped and becomes swap-backed again).
- Discarding (MADV_DONTNEED, and MADV_FREE too) a swapped frame frees its swap
  slot at once (mm/memory.c ``zap_nonpresent_ptes`` → ``free_swap_and_cache_nr``;
  mm/madvise.c ``madvise_free_pte_range``).
- A chunk goes to swap only if the swap can take all of its resident frames
  (THP_SWAP allocates a whole cluster); departure: the kernel then splits the
  folio and fills the last free slots, so here up to 2 MiB of swap may stay
  unused before the OOM killer runs.
- Swap full and still over: the OOM killer ends the guest with the largest
  ``oom_badness`` = resident + swapped frames (mm/oom_kill.c ``oom_badness``:
  ``get_mm_rss + MM_SWAPENTS + page tables``; page tables are not modelled,
  ~0.2% of RSS), its VMM overhead counted as resident. Its frames and swap are
  freed and reclaim goes on.
- A guest that did not negotiate the model (an older guest) is counted but never
  swapped: it would not hear that its frames left and would not report its next
  touch of them, so the books would lose track. Its lazily freed frames are
  still reclaimed (as ``--memory-limit`` does today): it reports its next touch
  of any frame it reported free, so nothing is lost.

Evictions are told to the owning guest in runs of whole chunks (``pending``): a
chunk may hold frames the host still has or never had, and the guest reporting
its next touch of those costs nothing (the touch of a frame already resident is
no fault), while a frame the guest was not told of would be lost to the books.

Hot paths cost per chunk and per run, never per page in Python: the states are
one byte a frame in a bytearray per chunk, counted and rewritten with
``bytearray.count`` and slices (as ``host/memory/sim.py`` does).

The model only keeps books. A backend whose frames are real bytes (shm) gives a
guest a ``SwapStore`` (``GuestMemory.store``), which moves them: told before a
chunk's frames change state, it copies resident frames out to swap and punches
them, copies swapped frames back, or frees their swap; the sim has none.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, Protocol

# Defaults, per 4 KiB page: Intel SSD DC P4500 (NVMe), Lenovo Press product guide,
# Table 2: "Read access latency random 85 µs", "Write access latency random 20 µs"
# (docs/plans/density-sources.md, swap-in and swap-out cost).
from pagehint.config import SWAP_IN_COST, SWAP_OUT_COST

ABSENT = 0
RESIDENT = 1
LAZY = 2
SWAPPED = 3
_RESIDENT, _LAZY, _ABSENT, _SWAPPED = (
    bytes([RESIDENT]),
    bytes([LAZY]),
    bytes([ABSENT]),
    bytes([SWAPPED]),
)
# A 2 MiB folio: QEMU's THP advice on guest RAM (see the module's docstring).
CHUNK_SHIFT = 9
CHUNK_PAGES = 1 << CHUNK_SHIFT
_MASK = CHUNK_PAGES - 1
_ZEROS = memoryview(bytes(CHUNK_PAGES))
_ONES = memoryview(_RESIDENT * CHUNK_PAGES)


class SwapStore(Protocol):
    """Where a guest's frames really are (shm: its RAM file and the host's swap
    file). Each call comes before the states change, so ``ch.states`` still shows
    which frames the call is about; ``swapped`` is how many of the range's frames
    are SWAPPED (when it equals ``ch.swapped``, the chunk has none left after)."""

    def swap_out(self, ch: Chunk) -> None:
        """Write the chunk's RESIDENT frames to swap, then give them back."""

    def swap_in(self, ch: Chunk, off: int, end: int, swapped: int) -> None:
        """Read the SWAPPED frames of ch.states[off:end] back into memory."""

    def drop(self, ch: Chunk, off: int, end: int, swapped: int) -> None:
        """The SWAPPED frames of ch.states[off:end] were discarded: free their swap."""

    def release(self) -> None:
        """The guest is gone: all its swap is free."""


class TouchOutcome(NamedTuple):
    """What one batch of touches cost its guest."""

    brought: int  # frames made resident (minor + major faults)
    minor: int  # absent frames zero-filled
    major: int  # swapped frames read back
    swapped_out: int  # frames written to swap to make room, charged to this batch
    delay: float  # seconds the guest's workload waits: the I/O above
    killed: bool = False  # this guest was the OOM killer's victim


class Kill(NamedTuple):
    """One OOM kill: the victim and its ``oom_badness`` parts (pages)."""

    guest: GuestMemory
    resident: int  # its frames held and its VMM's overhead
    swapped: int

    @property
    def badness(self) -> int:
        return self.resident + self.swapped

    def reason(self) -> str:
        return (
            f"killed by the host's OOM killer (oom_badness {self.badness} pages: "
            f"{self.resident} resident, {self.swapped} swapped)"
        )


class Chunk:
    """2 MiB of one guest's RAM: a byte of state per frame, and their counts."""

    __slots__ = ("base", "lazy", "owner", "resident", "states", "swapped")

    def __init__(self, owner: GuestMemory, base: int, n: int) -> None:
        self.owner = owner
        self.base = base  # its first frame
        self.states = bytearray(n)
        self.resident = 0  # RESIDENT + LAZY
        self.lazy = 0
        self.swapped = 0

    def __repr__(self) -> str:
        return f"Chunk({self.owner.guest_id}@{self.base:#x})"


def _pieces(runs: Sequence[tuple[int, int]]) -> Iterator[tuple[int, int, int]]:
    """(chunk index, offset in it, frames) of every run, chunk by chunk."""
    for pfn, n in runs:
        end = pfn + n
        while pfn < end:
            off = pfn & _MASK
            k = min(CHUNK_PAGES - off, end - pfn)
            yield pfn >> CHUNK_SHIFT, off, k
            pfn += k


class GuestMemory:
    """One guest's frames in the host's memory."""

    def __init__(
        self, model: HostMemory, guest_id: str, nr_pages: int, evictable: bool, overhead: int
    ) -> None:
        self.model = model
        self.guest_id = guest_id
        self.nr_pages = nr_pages
        # Negotiated the model: its frames may be swapped (it hears of evictions).
        self.evictable = evictable
        self.overhead = overhead  # the VMM's own pages: resident, never swapped
        self.chunks: dict[int, Chunk] = {}  # made at first touch (sparse)
        self.resident = 0  # frames held: RESIDENT + LAZY (not the overhead)
        self.lazy = 0
        self.swapped = 0
        self.major_faults = 0
        self.minor_faults = 0
        # Seconds its touches waited on swap I/O: what the host's PSI would count as
        # this VM's memory stall (a vCPU blocked in a fault on its guest RAM).
        self.stall_seconds = 0.0
        self.released = False
        self.killed: Kill | None = None
        # Evicted runs (whole chunks) the guest has not been told of yet.
        self.pending: list[tuple[int, int]] = []
        self.store: SwapStore | None = None  # the bytes' mover (shm); None: books only

    def badness(self) -> int:
        return self.resident + self.overhead + self.swapped

    def take_evicted(self) -> list[tuple[int, int]]:
        runs, self.pending = self.pending, []
        self.model.dirty.pop(self, None)
        return runs

    def _chunk(self, idx: int) -> Chunk:
        ch = self.chunks.get(idx)
        if ch is None:
            base = idx << CHUNK_SHIFT
            ch = self.chunks[idx] = Chunk(self, base, min(CHUNK_PAGES, self.nr_pages - base))
        return ch

    # ---- the guest's operations ----------------------------------------------------

    def touched(self, runs: Sequence[tuple[int, int]]) -> TouchOutcome:
        """The guest used these frames: fault in what the host does not hold, then
        make room (which may swap, or kill)."""
        if self.released:
            return TouchOutcome(0, 0, 0, 0, 0.0, killed=self.killed is not None)
        model = self.model
        lru = model.lru
        minor = major = reused = 0
        ones = _ONES
        for idx, off, k in _pieces(runs):
            ch = self._chunk(idx)
            s = ch.states
            e = off + k
            held = s.count(RESIDENT, off, e)
            if held == k:
                continue  # the common case: nothing to fault
            lz = s.count(LAZY, off, e) if ch.lazy else 0
            sw = s.count(SWAPPED, off, e) if ch.swapped else 0
            absent = k - held - lz - sw
            if sw and self.store is not None:
                self.store.swap_in(ch, off, e, sw)  # back before the Notice settles this batch
            s[off:e] = ones[:k]
            ch.resident += absent + sw
            ch.lazy -= lz
            ch.swapped -= sw
            minor += absent
            major += sw
            reused += lz
            if not self.evictable:
                continue
            if absent or sw:
                lru[ch] = None  # a fault: the host saw the access
                lru.move_to_end(ch)
            elif ch not in lru:
                lru[ch] = None  # reused lazy frames are swap-backed again
        brought = minor + major
        self.resident += brought
        self.lazy -= reused
        self.swapped -= major
        self.minor_faults += minor
        self.major_faults += major
        model.used += brought
        model.swap_used -= major
        model.swap_ins += major
        out = model.make_room()
        delay = major * model.swap_in_cost + out * model.swap_out_cost
        self.stall_seconds += delay
        return TouchOutcome(brought, minor, major, out, delay, killed=self.killed is not None)

    def discard(self, ranges: Sequence[tuple[int, int]], lazily: bool = False) -> int:
        """MADV_DONTNEED (or MADV_FREE with ``lazily``) frames; returns frames released
        from memory (lazily: 0, they stay resident until reclaimed). Swapped frames
        give their slot back either way."""
        if self.released:
            return 0
        if lazily:
            self._discard_lazily(ranges)
            return 0
        released = freed_slots = 0
        chunks = self.chunks
        zeros = _ZEROS
        for idx, off, k in _pieces(ranges):
            ch = chunks.get(idx)
            if ch is None:
                continue
            s = ch.states
            e = off + k
            held = k - s.count(ABSENT, off, e)
            if not held:
                continue
            sw = s.count(SWAPPED, off, e) if ch.swapped else 0
            lz = s.count(LAZY, off, e) if ch.lazy else 0
            if sw and self.store is not None:
                self.store.drop(ch, off, e, sw)
            s[off:e] = zeros[:k]
            ch.resident -= held - sw
            ch.lazy -= lz
            ch.swapped -= sw
            released += held - sw
            freed_slots += sw
            self.lazy -= lz
        self.resident -= released
        self.swapped -= freed_slots
        self.model.used -= released
        self.model.swap_used -= freed_slots
        return released

    def _discard_lazily(self, ranges: Sequence[tuple[int, int]]) -> None:
        model = self.model
        freed_slots = 0
        for idx, off, k in _pieces(ranges):
            ch = self.chunks.get(idx)
            if ch is None:
                continue
            s = ch.states
            e = off + k
            res = s.count(RESIDENT, off, e)
            sw = s.count(SWAPPED, off, e) if ch.swapped else 0
            if not (res or sw):
                continue
            piece = s[off:e]
            if sw:
                if self.store is not None:
                    self.store.drop(ch, off, e, sw)
                piece = piece.replace(_SWAPPED, _ABSENT)
            s[off:e] = piece.replace(_RESIDENT, _LAZY)
            ch.lazy += res
            ch.swapped -= sw
            freed_slots += sw
            self.lazy += res
            if res:
                model.lazy_lru[ch] = None  # newest lazily freed last
                model.lazy_lru.move_to_end(ch)
        self.swapped -= freed_slots
        model.swap_used -= freed_slots

    def release(self) -> None:
        """The session ended (or was killed): its frames, overhead and swap go."""
        if self.released:
            return
        self.released = True
        model = self.model
        for ch in self.chunks.values():
            model.lru.pop(ch, None)
            model.lazy_lru.pop(ch, None)
        model.used -= self.resident + self.overhead
        model.swap_used -= self.swapped
        model.guests.pop(self, None)
        model.dirty.pop(self, None)
        if self.store is not None:
            self.store.release()
        self.chunks = {}
        self.resident = self.lazy = self.swapped = 0
        self.pending = []

    # ---- what the host does to it ------------------------------------------------------

    def _drop_lazy(self, ch: Chunk) -> int:
        """Reclaim a chunk's lazily freed frames (no I/O); returns frames freed."""
        n = ch.lazy
        if n:
            ch.states[:] = ch.states.replace(_LAZY, _ABSENT)
            ch.lazy = 0
            ch.resident -= n
            self.lazy -= n
            self.resident -= n
            self._evicted(ch)
        return n

    def _swap_out(self, ch: Chunk) -> int:
        """Write a chunk's resident frames to swap; returns frames written."""
        n = ch.resident - ch.lazy
        if n:
            if self.store is not None:
                self.store.swap_out(ch)  # first: a failed write leaves the books as they were
            ch.states[:] = ch.states.replace(_RESIDENT, _SWAPPED)
            ch.resident -= n
            ch.swapped += n
            self.resident -= n
            self.swapped += n
            self._evicted(ch)
        return n

    def _evicted(self, ch: Chunk) -> None:
        if not self.evictable:
            return  # an older guest: it speaks no notices (lazy frames only: see above)
        base, n = ch.base, len(ch.states)
        pending = self.pending
        if pending:
            p, k = pending[-1]
            if p <= base and base + n <= p + k:
                return  # told already (and not yet taken)
            if p + k == base:  # the LRU often evicts a guest's chunks in a row: one run
                pending[-1] = (p, k + n)
                self.model.dirty[self] = None
                return
        pending.append((base, n))
        self.model.dirty[self] = None


class HostMemory:
    """The host's memory and swap, shared by every guest (see the module's docstring).

    ``memory_pages``: what the host has for guests and their VMMs; ``swap_pages``:
    its swap; ``overhead_pages``: each guest's VMM, charged at attach.
    ``on_kill`` is told of each OOM kill after the victim's memory was freed.
    """

    def __init__(
        self,
        memory_pages: int,
        swap_pages: int = 0,
        swap_in_cost: float = SWAP_IN_COST,
        swap_out_cost: float = SWAP_OUT_COST,
        overhead_pages: int = 0,
        on_kill: Callable[[Kill], None] | None = None,
    ) -> None:
        self.memory_pages = memory_pages
        self.swap_pages = swap_pages
        self.swap_in_cost = swap_in_cost
        self.swap_out_cost = swap_out_cost
        self.overhead_pages = overhead_pages
        self.on_kill = on_kill
        self.used = 0  # frames held for every guest, and their VMMs' overhead
        self.swap_used = 0
        self.swap_ins = 0  # frames read back (major faults), host-wide
        self.swap_outs = 0  # frames written out
        self.lazy_reclaimed = 0  # lazily freed frames dropped (no I/O)
        self.oom_kills = 0
        self.kills: list[Kill] = []  # every kill, oldest first (for logs and tests)
        # Chunks of evictable guests, least recently faulted first.
        self.lru: OrderedDict[Chunk, None] = OrderedDict()
        # Chunks holding lazily freed frames, oldest lazily freed first.
        self.lazy_lru: OrderedDict[Chunk, None] = OrderedDict()
        self.guests: dict[GuestMemory, None] = {}  # attach order
        # Guests with evictions they have not been told of (``take_evicted``).
        self.dirty: dict[GuestMemory, None] = {}

    def fits(self, nr_pages: int) -> bool:
        """Could a guest of ``nr_pages`` frames ever be held (memory + swap)?"""
        return nr_pages + self.overhead_pages <= self.memory_pages + self.swap_pages

    def attach(self, guest_id: str, nr_pages: int, evictable: bool) -> GuestMemory:
        """A new guest: its VMM's overhead is resident from now on (which may swap
        others out, or kill one)."""
        g = GuestMemory(self, guest_id, nr_pages, evictable, self.overhead_pages)
        self.guests[g] = None
        self.used += g.overhead
        self.make_room()
        return g

    def make_room(self) -> int:
        """Reclaim until the guests fit the host's memory: lazy frames, then swap,
        then OOM kills. Returns frames swapped out (the caller's I/O to wait for)."""
        out = 0
        while self.used > self.memory_pages:
            if self._reclaim_lazy(self.used - self.memory_pages):
                continue
            ch = self._coldest()
            if ch is not None and ch.resident - ch.lazy <= self.swap_pages - self.swap_used:
                n = ch.owner._swap_out(ch)
                del self.lru[ch]
                self.used -= n
                self.swap_used += n
                self.swap_outs += n
                out += n
            elif not self._kill():
                break  # nothing left to kill (cannot happen while used > 0)
        return out

    def _reclaim_lazy(self, want: int) -> int:
        got = 0
        lazy_lru = self.lazy_lru
        while got < want and lazy_lru:
            ch, _ = lazy_lru.popitem(last=False)
            got += ch.owner._drop_lazy(ch)
        self.used -= got
        self.lazy_reclaimed += got
        return got

    def _coldest(self) -> Chunk | None:
        """The least recently faulted chunk holding frames to swap (chunks left with
        none are dropped from the LRU as they are met)."""
        lru = self.lru
        while lru:
            ch = next(iter(lru))
            if ch.resident - ch.lazy > 0:
                return ch
            del lru[ch]
        return None

    def _kill(self) -> bool:
        if not self.guests:
            return False
        # The largest; on a tie the newest: mm/oom_kill.c oom_evaluate_task skips a
        # task only when points < chosen_points, so an equal one scanned later
        # (for_each_process: creation order) takes the place.
        victim = max(reversed(self.guests), key=GuestMemory.badness)
        if victim.badness() == 0:
            return False
        kill = Kill(victim, victim.resident + victim.overhead, victim.swapped)
        victim.killed = kill
        victim.release()
        self.oom_kills += 1
        self.kills.append(kill)
        if self.on_kill is not None:
            self.on_kill(kill)
        return True
