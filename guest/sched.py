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
polls every POLL_S of its work, or HOST_SHARE of the time the host has had the
report if that is longer (poll_interval): the answer is taken up within about
two polls (the workload's turn already queued, then the pass's), and a host
that takes long, or never answers, costs the workload no more than its usual
slices once the interval reaches them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import perf_counter

# Seconds of the workload's work between polls while a report is out, at least.
# A yield costs 3-4.5 us on uvloop alone, 7-8.5 us amid a churn's operations (its
# caches), against 4-9 us for an operation (measured here, 2026-12-06); an answer
# waits at most about 0.2 ms, a fiftieth of the 10 ms at which the reference
# recordings sample the kernel's returns (bench/reference/linux/record.py).
POLL_S = 1e-4
# ...and at most this share of the time the host has had the report: an answer
# comes at most 5% later than the host gave it, the band bench/fidelity.py holds
# every figure to (1 +/- 0.05 of the kernel's). A poll every POLL_S for as long
# as a stalled host takes cost a busy sim workload 16-19% of its operations
# (bench_sched); growing with the wait, the polls reach the workload's usual
# 1 ms slices after 20 ms, so a report out for good costs nothing more.
HOST_SHARE = 0.05


class KernelWork:
    """Whether a policy's worker is under way, and whether it waits on the host."""

    __slots__ = ("_on_begin", "active", "waiting", "waiting_since")

    def __init__(self) -> None:
        self.active = 0  # passes under way
        self.waiting = 0  # reports out with the host (a pass's, or a bare one)
        self.waiting_since = 0.0  # perf_counter() when the earliest of them went out
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

    def poll_interval(self, now: float) -> float:
        """Seconds of work between the workload's polls while a report is out:
        POLL_S, or HOST_SHARE of the time the host has had it if longer."""
        return max(POLL_S, HOST_SHARE * (now - self.waiting_since))

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
        """A report out with the host: the workload polls meanwhile (poll_interval)."""
        if not self.waiting:
            self.waiting_since = perf_counter()
        self.waiting += 1
        try:
            for cue in self._on_begin:
                cue()
            yield
        finally:
            self.waiting -= 1
