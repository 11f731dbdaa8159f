"""The merged design: free page reporting (Linux 5.7+, mm/page_reporting.c).

Behaviour reproduced, with the kernel's names:

* ``notify_free`` (page_reporting_notify_free): a free that forms a block of
  order >= ``page_reporting_order`` requests a pass. The request is a small
  state machine, IDLE -> REQUESTED -> ACTIVE: a request while IDLE schedules a
  pass after ``delay`` (2 s, "to allow a sizable queue to build"), as delayed
  work: it runs when the timer wheel fires, at the first 8-jiffy boundary after
  the 2 s (up to 32 ms late at HZ=250; ``--timer-hz``, timer_wheel.py); a
  request while ACTIVE leaves REQUESTED behind so another pass follows, after
  the delay.
* A pass (page_reporting_process) walks every zone (``process_zone``), which is
  skipped unless its free pages exceed the low watermark plus
  ``capacity << page_reporting_order``. For each order from the reporting order
  up, and each migratetype's list of it, it runs a ``cycle`` over that list:
  reported blocks are skipped, unreported ones isolated into a batch of
  ``capacity`` shared across the zone's lists; when the batch is full the
  list is rotated so the walk resumes at the next block, the batch is
  reported and ``drain``-ed back (to the tail of its list, no hook, marked
  reported if still free at its order).
* A budget of ``ceil(nr_free / (capacity * 16))`` reports per list per pass,
  ``nr_free`` being the order's blocks over all its migratetypes' lists;
  running out sets REQUESTED and stops that list, so another pass follows
  after the delay.
* Isolation obeys the zone's min watermark (``__isolate_free_page``): while the
  zone holds ``wmark_min + 2**order`` free pages or fewer, a block is left
  alone, and that list's cycle ends there (rotated to it), as in the kernel.
* The leftover batch is reported at the end of each zone. A failed report
  drains its pages back unmarked and ends the pass.
* The capacity is the policy's own (``--capacity``, 32 = PAGE_REPORTING_CAPACITY
  by default); the device only checks it fits its queue, as virtio_balloon
  refuses to register (-ENOSPC) with a smaller one. The kernel uses the
  constant in the watermark and the budget; here the capacity set is used,
  as recent kernels do with page_reporting_dev_info.capacity. The order is
  the larger of ``--reporting-order`` and the device's minimum.
* Registering the device requests an initial pass, as page_reporting_register does.

The walk: the kernel walks the live list and, after each report, starts
again at its head (the lock was dropped: blocks freed meanwhile sit there).
We walk a copy of the list, taken when the cycle begins and again after each
report, which visits the same blocks in the same order. One departure: the
kernel holds the zone lock for the walk; we yield to the workload every 1,024
entries of a long list, so blocks may leave it (skipped by their flag) and the
zone's free count may move between two isolations.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from guest.hinting.base import Policy
from guest.hinting.device import Block, ReportingDevice
from guest.hinting.timer_wheel import fire_time
from guest.mm.buddy import BuddyAllocator
from guest.mm.constants import FREE, MAX_ORDER, MIGRATE_MOVABLE, MIGRATE_PCPTYPES, REPORTED
from guest.mm.zone import Zone
from pagehint.config import HintingConfig

PAGE_REPORTING_IDLE = 0
PAGE_REPORTING_REQUESTED = 1
PAGE_REPORTING_ACTIVE = 2

YIELD_EVERY = 1024  # list entries visited between yields to the event loop


class ReportingPolicy(Policy):
    name = "reporting"

    def __init__(
        self,
        cfg: HintingConfig,
        mm: BuddyAllocator,
        device: ReportingDevice | None,
    ) -> None:
        super().__init__(cfg, mm, device)
        self.page_reporting_order = self.order
        self.delay = cfg.delay
        self.budget_divisor = cfg.budget_divisor
        self.state = PAGE_REPORTING_IDLE
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        # Isolated blocks waiting in the batch (the kernel's scatterlist).
        self._batch: list[Block] = []
        self._t_sync = 0.0
        self.budget_exhausted = 0
        self.zones_skipped = 0
        # The guest's jiffies count from its boot, so guests booted at other instants
        # have timer wheels of other phases (timer_wheel.py), as separate VMs do.
        self.boot = mm.booted_at

    # ---- request state machine ----------------------------------------------------------

    def notify_free(self, zone: Zone, order: int) -> None:
        # The allocator only calls us for order >= page_reporting_order (set_hook).
        self.request()

    def request(self) -> None:
        """__page_reporting_request()."""
        if self.state == PAGE_REPORTING_REQUESTED:
            return
        previous, self.state = self.state, PAGE_REPORTING_REQUESTED
        if previous != PAGE_REPORTING_IDLE:
            return  # ACTIVE: the running pass will schedule another
        self._schedule()

    def _schedule(self) -> None:
        # schedule_delayed_work(): the pass runs when the timer wheel fires, a few
        # jiffies after the delay (timer_wheel.py), not at the delay exactly.
        loop = asyncio.get_running_loop()
        when = fire_time(loop.time(), self.delay, self.cfg.timer_hz, self.boot)
        self._timer = loop.call_at(when, self._start_pass)

    def _start_pass(self) -> None:
        self._timer = None
        self._task = asyncio.get_running_loop().create_task(self.process(), name="page-reporting")

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.mm.set_hook(self.notify_free, self.page_reporting_order)
        self.request()  # initial flush of zones, as page_reporting_register()

    async def stop(self) -> None:
        self.mm.set_hook(None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.state = PAGE_REPORTING_IDLE

    def idle(self) -> bool:
        return self.state == PAGE_REPORTING_IDLE

    # ---- a pass -----------------------------------------------------------------------------

    async def process(self) -> None:
        """page_reporting_process(): one pass over every zone."""
        self.state = PAGE_REPORTING_ACTIVE
        self.stats.walks += 1
        self._t_sync = time.perf_counter()
        try:
            with self.kernel_work.running():
                for zone in self.mm.zones:
                    if not await self.process_zone(zone):
                        break
        finally:
            # Whatever is still isolated (a cancelled pass) goes back unreported.
            self.drain(self._batch, reported=False)
            self._batch = []
            self.stats.worker_seconds += time.perf_counter() - self._t_sync
            self._task = None
        if self.state == PAGE_REPORTING_REQUESTED:
            self._schedule()
        else:
            self.state = PAGE_REPORTING_IDLE

    async def process_zone(self, zone: Zone) -> bool:
        """page_reporting_process_zone(); False if a report failed."""
        order = self.page_reporting_order
        watermark = zone.wmark_low + (self.capacity << order)
        if zone.nr_free_pages <= watermark:
            self.zones_skipped += 1
            return True
        for o in range(order, MAX_ORDER + 1):
            for mt in range(MIGRATE_PCPTYPES):
                if not await self.cycle(zone, o, mt):
                    return False
        if self._batch:
            return await self._report()
        return True

    async def cycle(self, zone: Zone, order: int, mt: int = MIGRATE_MOVABLE) -> bool:
        """page_reporting_cycle() over one free list; False if a report failed."""
        nr_free = zone.free_area[order].nr_free
        area = zone.free_area[order].free_list[mt]
        if not area.nr_free:
            return True
        budget = -(-nr_free // (self.capacity * self.budget_divisor))
        pg = self.mm.pg
        free_flag = FREE | order
        reported_flag = FREE | REPORTED | order
        skip_isolation = self.cfg.unsafe_skip_isolation
        in_batch: set[int] = set()
        snapshot = list(area)
        i = 0
        while i < len(snapshot):
            pfn = snapshot[i]
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await self._yield()
            flag = pg[pfn]
            if flag == reported_flag or flag != free_flag or pfn in in_batch:
                i += 1  # PageReported, or it left this list since the snapshot
                continue
            if budget < 0:
                self.state = PAGE_REPORTING_REQUESTED
                self.budget_exhausted += 1
                area.rotate_to_front(pfn)
                return True
            if len(self._batch) < self.capacity:
                if skip_isolation:
                    in_batch.add(pfn)
                elif not self.mm.isolate_free(pfn, order):
                    # __isolate_free_page refused (min watermark): the kernel ends this
                    # list's cycle here, rotated so the next pass starts at this block,
                    # and goes on with the next order.
                    self.stats.isolation_refused += 1
                    area.rotate_to_front(pfn)
                    return True
                self._batch.append((pfn, order))
                i += 1
                continue
            # The batch is full: make this block the list head, report, drain,
            # then look at the head (this block) again, as the kernel does.
            area.rotate_to_front(pfn)
            ok = await self._report()
            budget -= 1
            in_batch.clear()
            if not ok:
                return False
            # The list changed while the report was out (frees at the head, the
            # batch drained to the tail): walk it again from its head, as the
            # kernel resets ``next`` to list_first_entry.
            snapshot = list(area)
            i = 0
        return True

    async def _yield(self) -> None:
        self.stats.worker_seconds += time.perf_counter() - self._t_sync
        await asyncio.sleep(0)
        self._t_sync = time.perf_counter()

    async def _report(self) -> bool:
        batch, self._batch = self._batch, []
        self.note_isolated()
        self.stats.worker_seconds += time.perf_counter() - self._t_sync
        try:
            # report_batch drains: back to the tail, marked reported on success.
            return await self.report_batch(batch, mark=True, to_tail=True)
        finally:
            self._t_sync = time.perf_counter()
