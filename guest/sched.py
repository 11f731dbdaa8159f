"""Kernel work runs ahead of the workload on the guest's CPU.

A reporting pass (page_reporting_process) and v10's hinting work run in a
kworker. In the kernel, when the pass's timer fires or the host's answer wakes
it, the kworker runs at once, not after the task on the CPU has used up a time
slice: CFS places a waking task up to half of sched_latency behind the run
queue's least vruntime (kernel/sched/fair.c, place_entity with
GENTLE_FAIR_SLEEPERS) and preempts the running task if that one is more than
the wakeup granularity ahead (check_preempt_wakeup); a user task that has been
running while the kworker slept always is. And once running, the pass walks a
free list holding zone->lock with interrupts off (spin_lock_irq in
page_reporting_cycle): nothing else on that CPU runs until it lets go. On a
guest with a second vCPU the pass may not even share one with the workload.

pagehint's guest is one event loop: the workload and the worker take turns at
their awaits, and a busy workload yields every millisecond
(guest/workloads/base.py). So each await of a pass that met a busy workload
waited up to a millisecond behind it, and since the kernel schedules the next
pass 2 s after the previous one ends, the lag carried into every pass after it
(measured on shm, where touching a page costs 15-30 us: a pass during a
256 MiB touch ended 21 ms late, and every later pass came that much later).
While a policy's work is under way, the workload yields before each operation
instead, so a pass waits at most one operation at each await — for its own
yields, and for the host's answer, which the loop sees only when it polls.
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
