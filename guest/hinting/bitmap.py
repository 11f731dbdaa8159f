"""The seed design: per-zone coarse bitmaps (Linux RFC "mm: page_hinting", v10, June 2019).

By default this is v10, behaviour for behaviour:

* The hook (``page_hinting_enqueue``) runs after buddy merging for blocks of
  order >= ``order`` (MAX_ORDER-2 = 9). It sets the chunk's bit and, if the bit
  was new, counts it in its zone (``bm_zone[].free_pages`` in v10, ``new_bits``
  here). When a zone's count reaches ``threshold`` (16) the worker is queued.
* The worker walks only the zones whose count reached the threshold. For each
  it takes the count away first, then walks the zone's set bits: each bit is
  cleared, and the chunk isolated if it still heads a free block of order >=
  ``order`` (``__isolate_free_page``, which refuses to take the zone below its
  min watermark; a refused or stale bit is simply dropped). Every ``capacity``
  (16) isolated blocks are reported synchronously and freed back at the list
  head without the hook; the leftover is reported at the end of that zone.
* After the walk the count is reconciled: bits counted while the walk ran and
  visited by it are taken off too (``if (scanned_pages > free_pages)
  atomic_sub(scanned_pages - free_pages, ...)``), so the count stays equal to
  the bits still set.
* A failed report is ignored (v10's ``hint_pages`` returns void): the blocks go
  back unreported and their bits stay cleared. There is no timer: bits below
  the threshold wait for more frees.

Departures, each off by default and named in HintingConfig / on the command line:
``bitmap_flush_after`` (walk a zone whose bits waited that long below the
threshold), ``bitmap_retry`` (set a failed report's bits again and back off),
``bitmap_cross_zone`` (walk every zone with bits, one batch across zones).

One byte per chunk (a bytearray): the hook costs a store, and
``bytearray.find`` scans a sparse bitmap in microseconds; Python ints would copy
on every update.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from guest.hinting.base import Policy
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
    ) -> None:
        super().__init__(cfg, mm, device)
        self.threshold = cfg.effective_threshold()
        self.flush_after = cfg.bitmap_flush_after
        self.bitmaps: list[bytearray] = [
            bytearray(-(-zone.spanned_pages // (1 << self.order))) for zone in mm.zones
        ]
        # Per zone: set bits not yet taken by a walk (v10's bm_zone[].free_pages).
        self.new_bits = [0] * len(mm.zones)
        self.pending_since: list[float | None] = [None] * len(mm.zones)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._walking = False
        self._t_sync = 0.0
        # --retry-failed: zones whose bits a failed report set again (walked after the
        # backoff whatever their count), and whether the worker is backing off now.
        self._retry_zones: set[int] = set()
        self._backing_off = False

    # ---- the hook: runs inside free(), must be cheap ------------------------------

    def notify_free(self, zone: Zone, order: int) -> None:
        # The allocator names the merged block's head in last_freed (v10's hook was
        # given the page; the merged kernel's hook only the order).
        pfn = self.mm.last_freed
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
        """No walk running or due (bits below the threshold wait, in v10, for more frees)."""
        if self._walking or self._wake.is_set() or self._backing_off:
            return False
        return not any(self._due(i, time.monotonic()) for i in range(len(self.new_bits)))

    def pending_bits(self) -> int:
        return sum(b.count(1) for b in self.bitmaps)

    def _due(self, i: int, now: float) -> bool:
        """Is zone ``i`` to be walked: threshold reached, or (departure) flush time passed."""
        if self.new_bits[i] >= self.threshold or i in self._retry_zones:
            return True
        since = self.pending_since[i]
        return self.flush_after > 0 and since is not None and now - since >= self.flush_after

    # ---- the worker ----------------------------------------------------------------

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self.flush_after / 4)
            now = time.monotonic()
            if any(self._due(i, now) for i in range(len(self.new_bits))):
                self._wake.set()

    async def _worker(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._walking = True
            try:
                ok = await self._run()
            finally:
                self._walking = False
            if not ok:
                # Only with bitmap_retry: back off, then walk the bits set again.
                self._backing_off = True
                try:
                    await asyncio.sleep(self.backoff())
                finally:
                    self._backing_off = False
                self._wake.set()

    async def _run(self) -> bool:
        """One queued work item: walk the due zones. False if a retried report failed."""
        now = time.monotonic()
        cross = self.cfg.bitmap_cross_zone
        due = [
            z
            for z in self.mm.zones
            if self._due(z.index, now) or (cross and self.new_bits[z.index])
        ]
        if cross and not any(self._due(z.index, now) for z in due):
            return True
        batch: list[Block] = []
        try:
            with self.kernel_work.running():
                return await self._walk_zones(due, batch, cross)
        finally:
            # Stopped mid-walk: blocks isolated but not yet sent go back unreported
            # (v10's page_hinting_disable waits for the walk instead; a stop here
            # must not leave them off the free lists).
            self.drain(batch, reported=False, to_tail=False)
            batch.clear()

    async def _walk_zones(self, due: list[Zone], batch: list[Block], cross: bool) -> bool:
        for zone in due:
            i = zone.index
            taken = self.new_bits[i]
            self.new_bits[i] -= taken
            self._retry_zones.discard(i)
            scanned, ok = await self._walk_zone(zone, batch, flush_leftover=not cross)
            if scanned > taken:
                self.new_bits[i] -= scanned - taken
            self.pending_since[i] = time.monotonic() if self.new_bits[i] else None
            if not ok:
                self.new_bits[i] = self.bitmaps[i].count(1)  # the walk stopped part-way
                return False
        if batch:
            to_send = list(batch)
            batch.clear()
            return await self._send(to_send)
        return True

    async def _walk_zone(
        self, zone: Zone, batch: list[Block], flush_leftover: bool
    ) -> tuple[int, bool]:
        """scan_hinting_bitmap(): returns (bits scanned, False if a retried report failed)."""
        self.stats.walks += 1
        mm = self.mm
        pg = mm.pg
        order = self.order
        capacity = self.capacity
        skip_isolation = self.cfg.unsafe_skip_isolation
        bitmap = self.bitmaps[zone.index]
        scanned = 0
        self._t_sync = time.perf_counter()
        pos = bitmap.find(1)
        while pos >= 0:
            bitmap[pos] = 0  # a bit is only a hint: cleared whatever the chunk holds now
            scanned += 1
            pfn = zone.start_pfn + (pos << order)
            flag = pg[pfn]
            if flag & STATE_MASK == FREE and flag & ORDER_MASK >= order:
                block_order = flag & ORDER_MASK
                if skip_isolation or mm.isolate_free(pfn, block_order):
                    batch.append((pfn, block_order))
                else:
                    self.stats.isolation_refused += 1
                if len(batch) >= capacity:
                    to_send = list(batch)
                    batch.clear()  # from here report_batch owns these blocks
                    ok = await self._send_timed(to_send)
                    if not ok:
                        return scanned, False
            else:
                self.stats.stale += 1
            if scanned % YIELD_EVERY_CHUNKS == 0:
                self.stats.worker_seconds += time.perf_counter() - self._t_sync
                await asyncio.sleep(0)
                self._t_sync = time.perf_counter()
            pos = bitmap.find(1, pos + 1)
        self.stats.worker_seconds += time.perf_counter() - self._t_sync
        if flush_leftover and batch:
            to_send = list(batch)
            batch.clear()
            return scanned, await self._send(to_send)
        return scanned, True

    async def _send_timed(self, batch: list[Block]) -> bool:
        self.stats.worker_seconds += time.perf_counter() - self._t_sync
        try:
            return await self._send(batch)
        finally:
            self._t_sync = time.perf_counter()

    async def _send(self, batch: list[Block]) -> bool:
        self.note_isolated()
        # v10 frees reported pages back like any free of that order, at the list head.
        ok = await self.report_batch(batch, mark=False, to_tail=False)
        if ok or not self.cfg.bitmap_retry:
            return True  # v10 ignores a failed report: the bits stay cleared
        for pfn, _order in batch:
            zone = self.mm.zone_of(pfn)
            bit = (pfn - zone.start_pfn) >> self.order
            if not self.bitmaps[zone.index][bit]:
                self.bitmaps[zone.index][bit] = 1
                self.new_bits[zone.index] += 1
                if self.pending_since[zone.index] is None:
                    self.pending_since[zone.index] = time.monotonic()
            self._retry_zones.add(zone.index)
        return False
