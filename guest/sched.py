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
polls every POLL_S of its work until every report out has been with the host
(written on the stream) for HOST_LATE_S. The answer then reaches the pass
within about three polls (the stream's reader, the report's task, the pass:
each takes a turn of the loop), and when the pass can go on (runnable again)
the workload is cued to yield at its next operation. A report with the host
longer than that is late by the project's own measure of a healthy host, and
the workload goes back to its usual slices: a host that stalls, or never
answers, costs it only the polls of HOST_LATE_S.
(v10's worker spins on the host's answer, holding its CPU; pagehint's lets the
workload run beside it, kinder to the workload than v10 was.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import perf_counter

# Seconds of the workload's work between polls while a report is out. A yield
# costs 3-4.5 us on uvloop alone, 7-8.5 us amid a churn's operations (its
# caches), against 4-9 us for an operation (measured here, 2026-12-06); an answer
# waits about three polls, 0.3 ms, a thirtieth of the 10 ms at which the
# reference recordings sample the kernel's returns (bench/reference/linux/record.py).
POLL_S = 1e-4
# A report with the host (on the stream) longer than this is late: the load
# test's goal for a healthy host, ack p99 <= 50 ms with 256 guests (issue 27,
# bench/bench_loadtest.py P99_GOAL_MS). Polling every POLL_S for as long as a
# stalled host took cost a busy sim workload 16-19% of its operations
# (bench_sched, measured 2026-12-06); past this, its usual 1 ms slices, which
# take up a late answer within a few ms.
HOST_LATE_S = 0.05


class KernelWork:
    """Whether a policy's worker is under way, and whether it waits on the host."""

    __slots__ = ("_on_begin", "_out", "active")

    def __init__(self) -> None:
        self.active = 0  # passes under way
        self._out: list[_Report] = []  # reports out with the host, oldest first
        self._on_begin: list[Callable[[], None]] = []

    def subscribe(self, on_begin: Callable[[], None]) -> None:
        """Call ``on_begin`` whenever work begins or a pass can go on again (a
        workload's cue to look at once)."""
        self._on_begin.append(on_begin)

    @property
    def waiting(self) -> int:
        """Reports out with the host (a pass's, or a bare one)."""
        return len(self._out)

    @property
    def under_way(self) -> bool:
        return bool(self.active or self._out)

    @property
    def runnable(self) -> bool:
        """A pass under way and not waiting on the host: it goes first."""
        return self.active > len(self._out)

    def written(self) -> None:
        """The oldest report not yet on the wire now is (the device calls this as it
        writes a chain): the host has it, and its clock for HOST_LATE_S starts."""
        for report in self._out:
            if report.written_at is None:
                report.written_at = perf_counter()
                return

    def host_late(self, now: float) -> bool:
        """Every report out is with the host, the oldest for over HOST_LATE_S. Not
        while one is still being written: the guest's own send (behind its
        touches on the stream) is the kick, the kworker's work, and polls keep
        it going. A device that never says (an in-process one) is never late."""
        oldest = now
        for report in self._out:
            if report.written_at is None:
                return False
            oldest = min(oldest, report.written_at)
        return now - oldest > HOST_LATE_S

    def _cue(self) -> None:
        for cue in self._on_begin:
            cue()

    @contextmanager
    def running(self) -> Iterator[None]:
        """A pass, from its start to its end."""
        self.active += 1
        try:
            self._cue()
            yield
        finally:
            self.active -= 1

    @contextmanager
    def waiting_on_host(self) -> Iterator[None]:
        """A report out with the host: the workload polls meanwhile (POLL_S), and
        is cued when the pass can go on (the kworker woken by the answer)."""
        report = _Report()
        self._out.append(report)
        try:
            self._cue()
            yield
        finally:
            self._out.remove(report)
            if self.runnable:
                self._cue()


class _Report:
    __slots__ = ("written_at",)

    def __init__(self) -> None:
        self.written_at: float | None = None  # perf_counter() once on the wire
