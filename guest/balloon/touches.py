"""Which frames the host must be told the guest touched again.

No page fault crosses the wire, so for the simulated ledger the guest keeps a
byte per frame: 1 where the host holds the frame as far as the guest knows.
Allocating a block whose frames the host does not hold queues a run of
touched frames; runs go out in batches, in the reporting stream, ahead of any
later chain. With the shm backend the kernel sees the guest's writes itself
and nothing is tracked — unless the host has its own memory model
(host_memory negotiated): then the host must restore a frame it swapped out
before the guest writes it, and hears of the touch only from these runs, so
they are tracked on both backends. A frame the host evicts (``evicted``: a
Notice) is no longer held, and its next touch is told again.

``take`` hands a batch over by *removing* it from the queue first: a run that
an allocation extends after that goes into a new run, never into one whose
copy is already on its way (extending a run in place while a copy of it was
being written lost the extension, and the ledger with it).
"""

from __future__ import annotations

from collections.abc import Sequence

from guest.mm.buddy import BuddyAllocator, boot_written_free
from guest.mm.constants import MAX_BLOCK_PAGES

# Zero bytes for clearing a block's frames without allocating (a view: no copy).
_ZEROS = memoryview(bytes(MAX_BLOCK_PAGES))


class TouchTracker:
    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.enabled = False
        self.host_has = bytearray()
        self.runs: list[tuple[int, int]] = []
        self.pages_sent = 0
        # Runs ever queued and ever taken (or dropped by a reset), over the driver's
        # life: run k is on the wire once runs_taken >= k (the driver's settle tickets).
        self.runs_created = 0
        self.runs_taken = 0
        self.boot_written_sent = False

    def reset(self, mm: BuddyAllocator, enabled: bool) -> None:
        """A new session: the host holds nothing for us yet; queue what we use."""
        self.enabled = enabled
        self.runs = []
        self.runs_taken = self.runs_created
        self.host_has = bytearray(mm.nr_pages if enabled else 0)
        # The first host holds what the boot wrote and freed, as QEMU does (on shm
        # without the memory model the RAM file itself holds it); a later one starts
        # from nothing, as for every other free page.
        first, self.boot_written_sent = not self.boot_written_sent, True
        if enabled:
            for b in mm.blocks():
                if b.state == "allocated":
                    self.on_alloc(b.pfn, b.order)
            for pfn, order in boot_written_free(mm) if first else ():
                self.on_alloc(pfn, order)

    def on_alloc(self, pfn: int, order: int) -> bool:
        """The workload touched a block; True when a full batch is waiting."""
        if not self.enabled:
            return False
        hh = self.host_has
        if order == 0:
            if hh[pfn]:
                return False
            hh[pfn] = 1
            n = 1
        else:
            n = 1 << order
            if not hh.count(0, pfn, pfn + n):
                return False
            hh[pfn : pfn + n] = b"\x01" * n
        runs = self.runs
        if runs and runs[-1][0] + runs[-1][1] == pfn:
            runs[-1] = (runs[-1][0], runs[-1][1] + n)
        else:
            runs.append((pfn, n))
            self.runs_created += 1
        return len(runs) >= self.batch

    def take(self) -> list[tuple[int, int]]:
        """Remove and return the next batch of runs (empty when none is queued)."""
        runs = self.runs[: self.batch]
        del self.runs[: len(runs)]
        self.runs_taken += len(runs)
        self.pages_sent += sum(n for _, n in runs)
        return runs

    def evicted(self, runs: Sequence[tuple[int, int]]) -> None:
        """The host no longer holds these (pfn, count) runs (swapped out, or lazily
        freed frames reclaimed): their next touch must be told."""
        if not self.enabled:
            return
        hh = self.host_has
        end = len(hh)
        for pfn, count in runs:
            # The host's word, bounded to our RAM: a bad run must not grow the ledger.
            lo, hi = max(0, pfn), min(end, pfn + count)
            if lo < hi:
                hh[lo:hi] = bytes(hi - lo)

    def discarded(self, batch: Sequence[tuple[int, int]]) -> None:
        """The host discarded these blocks: their next touch must be told."""
        if not self.enabled:
            return
        hh = self.host_has
        zeros = _ZEROS
        for pfn, order in batch:
            hh[pfn : pfn + (1 << order)] = zeros[: 1 << order]
