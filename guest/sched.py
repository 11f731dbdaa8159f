"""Kernel work runs ahead of the workload on the guest's CPU.

A reporting pass (page_reporting_process) and v10's hinting work
(scan_hinting_bitmap) run in a kworker of system_wq, on the CPU that queued
them — for reporting, where its timer was armed: the freeing CPU, then the
kworker's own, usually the workload's. In 6.1, when the pass's timer fires or
the host's answer wakes it (virtballoon_free_page_report sleeps in wait_event
until balloon_ack), the kworker runs at once, not after the task on the CPU
has used up a time slice: CFS places a waking task up to half of
sched_latency behind the run queue's least vruntime (kernel/sched/fair.c,
place_entity with GENTLE_FAIR_SLEEPERS) and preempts the running task if that
one is more than the wakeup granularity ahead (check_preempt_wakeup), and the
credit is three granularities: a user task that has been running while the
kworker slept is that far ahead unless the kworker itself ran about two
granularities more since its last wake. Once running, the pass walks each
free list holding zone->lock with interrupts off (spin_lock_irq in
page_reporting_cycle), dropping it only around each report. v10 is harsher
still: its work is queued at once by the free that crossed the threshold, and
it spins on the host's answer (virtqueue_kick_sync) rather than sleeping.
(6.6+ schedules by EEVDF, where a woken task keeps its lag and may wait out
the running task's slice; the model follows 6.1.)

pagehint's guest is one event loop: the workload and the worker take turns at
their awaits, and a busy workload yields every millisecond
(guest/workloads/base.py). So each await of a pass that met a busy workload
waited up to a millisecond behind it, and since the kernel schedules the next
pass 2 s after the previous one ends, the lag carried into every pass after it
(measured on shm, where touching a page costs 15-30 us: a pass during a
256 MiB touch ended 21 ms late, and every later pass came that much later).
While a policy's pass is under way, the workload yields between its
operations instead (a trace replay between its batches of 64 events), so the
pass waits at most one operation at each of its own awaits. While a report is
out with the host the kworker sleeps, and 6.1's workload runs at full speed
beside it; pagehint's loop sees the answer only when it polls, so the workload
polls every POLL_S of its work: at most a yield's cost, and the answer is taken
up within about two polls (the workload's turn already queued, then the pass's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

# Seconds of the workload's work between polls while a report is out. A yield
# costs 4.5 us on uvloop in a workload's tick (10.9 us on plain asyncio), against
# 0.8 us for a tick that does not yield (measured here, 2026-12-06): a poll every
# 100 us costs under 5% (11% on asyncio), where a yield at every operation cost a
# busy sim workload 23-41% of its operations for as long as the host took. An
# answer waits at most about 0.2 ms, a fiftieth of the 10 ms at which the
# reference recordings sample the kernel's returns (bench/reference/linux/record.py).
POLL_S = 1e-4


class KernelWork:
    """Whether a policy's worker is under way, and whether it waits on the host."""

    __slots__ = ("_on_begin", "active", "waiting")

    def __init__(self) -> None:
        self.active = 0  # passes under way
        self.waiting = 0  # reports out with the host (a pass's, or a bare one)
        self._on_begin: list[Callable[[], None]] = []

    def subscribe(self, on_begin: Callable[[], None]) -> None:
        """Call ``on_begin`` whenever work begins (a workload's cue to look at once)."""
        self._on_begin.append(on_begin)

    @property
    def under_way(self) -> bool:
        return bool(self.active or self.waiting)

    @property
    def runnable(self) -> bool:
        """A pass under way and not waiting on the host: it goes first."""
        return self.active > self.waiting

    @contextmanager
    def running(self) -> Iterator[None]:
        """A pass, from its start to its end."""
        self.active += 1
        try:
            for cue in self._on_begin:
                cue()
            yield
        finally:
            self.active -= 1

    @contextmanager
    def waiting_on_host(self) -> Iterator[None]:
        """A report out with the host: the workload polls every POLL_S meanwhile."""
        self.waiting += 1
        try:
            for cue in self._on_begin:
                cue()
            yield
        finally:
            self.waiting -= 1
