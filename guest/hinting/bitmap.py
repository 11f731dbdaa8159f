"""The seed design: per-zone coarse bitmaps (Linux RFC "mm: page_hinting", v10).

One byte per chunk of ``order`` pages per zone (a bytearray: the hook costs a
store, and ``bytearray.find`` scans a sparse bitmap in microseconds; Python
ints copy on every update). The hook runs after buddy merging for blocks of
order >= ``order``; it sets the chunk's bit and counts new bits; at
``threshold`` new bits in a zone the worker is woken.

The worker walks each zone's bitmap, clears each bit it visits and isolates the
chunk if it still heads a free block of order >= ``order`` (a bit is only a
hint: otherwise it counts the bit as stale). Every ``capacity`` isolated blocks
it reports synchronously and, once acknowledged, frees them back without the
hook (the RFC's release path skips the hinting hook).

Departure from the seed, switchable: the seed never walks a zone with fewer
than ``threshold`` new bits, so the last few chunks freed before a workload
goes quiet are never hinted. ``flush_after`` (seconds, 0 disables) walks a zone
whose bits have been pending that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from guest.hinting.base import Log, Policy
from guest.hinting.device import Block, ReportingDevice
from guest.mm.buddy import BuddyAllocator
from guest.mm.constants import FREE, ORDER_MASK, STATE_MASK
from guest.mm.zone import Zone
from pagehint.config import HintingConfig

YIELD_EVERY_CHUNKS = 256  # visit this many bits between yields to the event loop


class BitmapPolicy(Policy):
    name = "bitmap"

    def __init__(
        self,
        cfg: HintingConfig,
        mm: BuddyAllocator,
        device: ReportingDevice | None,
        log: Log | None = None,
        flush_after: float = 2.0,
    ) -> None:
        super().__init__(cfg, mm, device, log)
        self.order = cfg.order
        self.threshold = cfg.threshold
        self.flush_after = flush_after
        self.bitmaps: list[bytearray] = [
            bytearray(-(-zone.managed_pages // (1 << self.order))) for zone in mm.zones
        ]
        self.new_bits = [0] * len(mm.zones)
        self.pending_since: list[float | None] = [None] * len(mm.zones)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._walking = False

    # ---- the hook: runs inside free(), must be cheap ------------------------------

    def notify_free(self, zone: Zone, order: int) -> None:
        # Only the head pfn is known here: the allocator calls us right after merging
        # with the final block in zone.free_area[order]'s head position.
        area = zone.free_area[order]
        pfn = next(reversed(area.head))
        i = zone.index
        bit = (pfn - zone.start_pfn) >> self.order
        bitmap = self.bitmaps[i]
        if bitmap[bit]:
            return
        bitmap[bit] = 1
        self.new_bits[i] += 1
        if self.pending_since[i] is None:
            self.pending_since[i] = time.monotonic()
        if self.new_bits[i] >= self.threshold:
            self._wake.set()

    # ---- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        self.mm.set_hook(self.notify_free, self.order)
        self._task = asyncio.create_task(self._worker(), name="bitmap-hinting-worker")
        if self.flush_after > 0:
            self._flush_task = asyncio.create_task(self._flusher(), name="bitmap-flush")

    async def stop(self) -> None:
        self.mm.set_hook(None)
        for task in (self._flush_task, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._flush_task = None

    def idle(self) -> bool:
        return not self._walking and not self._wake.is_set() and not any(self.new_bits)

    def pending_bits(self) -> int:
        return sum(b.count(1) for b in self.bitmaps)

    # ---- the worker ----------------------------------------------------------------

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self.flush_after / 4)
            now = time.monotonic()
            for since in self.pending_since:
                if since is not None and now - since >= self.flush_after:
                    self._wake.set()

    async def _worker(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._walking = True
            try:
                ok = await self._walk()
            finally:
                self._walking = False
            if not ok:
                # Back off, then walk again: the failed blocks' bits were set again.
                await asyncio.sleep(self.backoff())
                self._wake.set()

    async def _walk(self) -> bool:
        """Walk every zone's bitmap once; False if a report failed."""
        self.stats.walks += 1
        mm = self.mm
        pg = mm.pg
        order = self.order
        capacity = self.capacity
        skip_isolation = self.cfg.unsafe_skip_isolation
        batch: list[Block] = []
        t_sync = time.perf_counter()
        for zone in mm.zones:
            i = zone.index
            bitmap = self.bitmaps[i]
            self.new_bits[i] = 0
            self.pending_since[i] = None
            pos = bitmap.find(1)
            visited = 0
            while pos >= 0:
                bitmap[pos] = 0
                pfn = zone.start_pfn + (pos << order)
                flag = pg[pfn]
                if flag & STATE_MASK == FREE and flag & ORDER_MASK >= order:
                    block_order = flag & ORDER_MASK
                    if not skip_isolation:
                        mm.isolate(pfn, block_order)
                    batch.append((pfn, block_order))
                    if len(batch) >= capacity:
                        self.note_isolated()
                        self.stats.worker_seconds += time.perf_counter() - t_sync
                        ok = await self._send(batch)
                        t_sync = time.perf_counter()
                        batch = []
                        if not ok:
                            return False
                else:
                    self.stats.stale += 1
                visited += 1
                if visited % YIELD_EVERY_CHUNKS == 0:
                    self.stats.worker_seconds += time.perf_counter() - t_sync
                    await asyncio.sleep(0)
                    t_sync = time.perf_counter()
                pos = bitmap.find(1, pos + 1)
        self.note_isolated()
        self.stats.worker_seconds += time.perf_counter() - t_sync
        return await self._send(batch)

    async def _send(self, batch: list[Block]) -> bool:
        # The seed frees reported pages back like any free, at the list head.
        ok = await self.report_batch(batch, mark=False, to_tail=False)
        if not ok:
            # A failed chunk is hinted again after the backoff: set its bit again.
            for pfn, _order in batch:
                zone = self.mm.zone_of(pfn)
                bit = (pfn - zone.start_pfn) >> self.order
                if not self.bitmaps[zone.index][bit]:
                    self.bitmaps[zone.index][bit] = 1
                    self.new_bits[zone.index] += 1
        return ok
