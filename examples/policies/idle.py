"""An example policy of your own: report free memory only once the guest is idle.

Neither built-in policy waits for quiet: the seed design reports as soon as 16
chunks are hinted, Linux's reports 2 s after a large block forms, busy or not.
This one reports nothing while the guest allocates or frees, and once nothing
has changed for ``--delay`` seconds (default 2) it reports every unreported free
block of ``--reporting-order`` or more, a batch of ``--capacity`` at a time,
stopping as soon as the guest is busy again.

    pagehint guest --policy examples/policies/idle.py:IdlePolicy --workload memhog
    pagehint compare --policies reporting,examples/policies/idle.py:IdlePolicy

The contract it keeps (docs/policies.md): it reports only blocks it isolated,
through report_batch, which puts every block back; stop() ends its task.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from guest.hinting.base import Policy
from guest.hinting.device import Block
from guest.mm.constants import MAX_ORDER
from guest.mm.zone import Zone

TICK = 0.25  # seconds between looks at the allocator


class IdlePolicy(Policy):
    name = "idle"

    def start(self) -> None:
        self._last_change = time.monotonic()
        self._allocated = self.mm.allocated_pages
        self._busy = False
        # A free that forms a large block is activity too (the hook, after merging).
        self.mm.set_hook(self._notify_free, self.order)
        self._task: asyncio.Task[None] = asyncio.get_running_loop().create_task(self._watch())

    def _notify_free(self, zone: Zone, order: int) -> None:
        self._last_change = time.monotonic()

    async def stop(self) -> None:
        self.mm.set_hook(None)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def idle(self) -> bool:
        return not self._busy

    def _changed(self) -> bool:
        allocated = self.mm.allocated_pages
        if allocated != self._allocated:
            self._allocated = allocated
            self._last_change = time.monotonic()
            return True
        return False

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            if self._changed() or time.monotonic() - self._last_change < self.cfg.delay:
                continue
            self._busy = True
            try:
                await self._report_while_idle()
            finally:
                self._busy = False

    async def _report_while_idle(self) -> None:
        self.stats.walks += 1
        while not self._changed():
            t0 = time.perf_counter()
            batch = self._isolate_batch()
            self.stats.worker_seconds += time.perf_counter() - t0
            if not batch:
                return
            self.note_isolated()
            if not await self.report_batch(batch, mark=True, to_tail=True):
                await asyncio.sleep(self.backoff())
                return

    def _isolate_batch(self) -> list[Block]:
        """Up to ``capacity`` unreported free blocks, largest first, isolated."""
        batch: list[Block] = []
        for zone in self.mm.zones:
            for order in range(MAX_ORDER, self.order - 1, -1):
                for pfn in list(zone.free_area[order]):
                    if len(batch) == self.capacity:
                        return batch
                    if self.mm.is_reported(pfn, order):
                        continue
                    if self.mm.isolate_free(pfn, order):
                        batch.append((pfn, order))
                    else:
                        self.stats.isolation_refused += 1
                        break  # the zone is at its min watermark
        return batch
