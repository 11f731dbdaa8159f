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
While a policy's work is under way, the workload yields between its
operations instead (a trace replay between its batches of 64 events), so a
pass waits at most one operation at each await: for its own yields, and for
the host's answer, which the loop sees only when it polls. The price is the
other way round from the kernel's: while a report is out, 6.1's workload runs
at full speed beside the sleeping kworker, pagehint's pays a yield (~3 us)
per operation to poll for the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


class KernelWork:
    """Whether a policy's worker is under way, and who yields to it."""

    __slots__ = ("_on_begin", "active")

    def __init__(self) -> None:
        self.active = 0  # nested: a pass, and each report inside it
        self._on_begin: list[Callable[[], None]] = []

    def subscribe(self, on_begin: Callable[[], None]) -> None:
        """Call ``on_begin`` whenever work begins (a workload's cue to yield at once)."""
        self._on_begin.append(on_begin)

    @contextmanager
    def running(self) -> Iterator[None]:
        self.active += 1
        try:
            for cue in self._on_begin:
                cue()
            yield
        finally:
            self.active -= 1
