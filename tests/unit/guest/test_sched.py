"""Kernel work runs ahead of the workload (guest/sched.py): while a policy's pass
is under way, a busy workload yields between its operations, so each await of the
pass waits at most one operation, as a woken kworker preempts a user task; while
a report is out with the host, the workload only polls, every POLL_S of its work,
until the host is late (HOST_LATE_S)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from guest import sched
from guest.memory import GuestMemory
from guest.mm import BuddyAllocator
from guest.sched import HOST_LATE_S, POLL_S, KernelWork
from guest.workloads.base import WorkloadContext
from pagehint.config import BARE_MEMORY
from tests.waiting import wait_for


class _SlowMemory(GuestMemory):
    """Each allocation takes at least 50 us of wall time (a page written into a
    shared-memory RAM file costs 15-30 us here)."""

    def alloc(self, order: int = 0, migratetype: int = 1) -> int:
        end = time.perf_counter() + 5e-5
        while time.perf_counter() < end:
            pass
        return super().alloc(order, migratetype)


def _context(kernel: KernelWork | None) -> WorkloadContext:
    return WorkloadContext(_SlowMemory(BuddyAllocator(64 << 20, model=BARE_MEMORY)), kernel=kernel)


async def _in_its_stride(ctx: WorkloadContext) -> None:
    """Until the workload has done a slice's worth of operations (32: it reads
    the clock every 32), so that it is past its start."""
    await wait_for(lambda: ctx.stats.alloc_ops >= 32, 10.0, "the workload to get going")


async def _ops_per_await(ctx: WorkloadContext, awaits: int) -> list[int]:
    """The workload's operations between each two turns of this task."""
    seen = []
    for _ in range(awaits):
        before = ctx.stats.alloc_ops
        await asyncio.sleep(0)
        seen.append(ctx.stats.alloc_ops - before)
    return seen


async def _ops_per_worker_await(
    ctx: WorkloadContext, kernel: KernelWork, awaits: int, waiting: bool = False
) -> list[int]:
    """The workload's operations between each two turns of a worker under way (or,
    ``waiting``, of one whose report is out with the host)."""
    with kernel.waiting_on_host() if waiting else kernel.running():
        return await _ops_per_await(ctx, awaits)


async def test_a_worker_under_way_waits_at_most_one_operation_per_await() -> None:
    kernel = KernelWork()
    ctx = _context(kernel)
    work = asyncio.create_task(ctx.alloc_bytes("x", 16 << 20, 0))  # 4,096 operations
    await _in_its_stride(ctx)
    seen = await _ops_per_worker_await(ctx, kernel, 50)
    ctx.stop.set()
    await work
    assert max(seen) <= 1, seen


async def test_without_the_cue_a_worker_waits_behind_a_millisecond_slice() -> None:
    """The same worker beside a workload that does not yield to it: what the cue mends."""
    kernel = KernelWork()
    ctx = _context(None)
    work = asyncio.create_task(ctx.alloc_bytes("x", 16 << 20, 0))
    await _in_its_stride(ctx)
    seen = await _ops_per_worker_await(ctx, kernel, 50)
    ctx.stop.set()
    await work
    assert max(seen) >= 10, seen  # 1 ms of 50 us operations, and more


async def test_once_the_work_ends_the_workload_goes_back_to_its_slices() -> None:
    kernel = KernelWork()
    ctx = _context(kernel)
    work = asyncio.create_task(ctx.alloc_bytes("x", 16 << 20, 0))
    await _in_its_stride(ctx)
    await _ops_per_worker_await(ctx, kernel, 5)
    seen = await _ops_per_await(ctx, 20)
    ctx.stop.set()
    await work
    assert min(seen[1:]) >= 10, seen


async def test_while_a_report_is_out_the_workload_only_polls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """50 us operations: a poll every POLL_S (100 us) is every second or third of
    them, not every one; the loop still sees an answer within a few. (The host
    is never late here, however loaded the machine: lateness is the next tests'.)"""
    assert POLL_S == 1e-4
    monkeypatch.setattr(sched, "HOST_LATE_S", 3600.0)
    kernel = KernelWork()
    ctx = _context(kernel)
    work = asyncio.create_task(ctx.alloc_bytes("x", 16 << 20, 0))
    await _in_its_stride(ctx)
    seen = await _ops_per_worker_await(ctx, kernel, 50, waiting=True)
    ctx.stop.set()
    await work
    assert max(seen) <= 3, seen  # at most POLL_S and one operation more
    assert sorted(seen)[len(seen) // 2] >= 2, seen  # not at every operation


def test_a_report_is_late_once_every_one_out_has_been_with_the_host_host_late_s() -> None:
    kernel = KernelWork()
    far = HOST_LATE_S + 0.01
    assert not kernel.host_late(time.perf_counter() + 3600)  # nothing out
    with contextlib.ExitStack() as a:
        a.enter_context(kernel.waiting_on_host())
        # Not yet written (the guest's own send, behind its touches): never late.
        assert not kernel.host_late(time.perf_counter() + 3600)
        kernel.written()
        first = time.perf_counter()
        assert kernel.host_late(first + far)
        with contextlib.ExitStack() as b:
            b.enter_context(kernel.waiting_on_host())
            assert kernel.waiting == 2
            assert not kernel.host_late(first + far)  # the second is still being sent
            kernel.written()
            assert kernel.host_late(first + far)  # the oldest with the host is late
            a.close()  # the first is answered before the second: not nested
            assert kernel.waiting == 1
            # What is out now is the second: not late by the first's clock.
            assert not kernel.host_late(first + HOST_LATE_S)
            assert kernel.host_late(time.perf_counter() + far)
        assert not kernel.under_way


async def test_a_host_that_is_late_costs_the_workload_only_its_slices() -> None:
    """A report out longer than HOST_LATE_S (a stalled or gone host): the
    workload is back to its 1 ms slices, 20 and more 50 us operations between
    turns, not a poll every two (which cost a busy workload 16-19% of its
    operations for as long as the host took: bench_sched)."""
    kernel = KernelWork()
    ctx = _context(kernel)
    work = asyncio.create_task(ctx.alloc_bytes("x", 16 << 20, 0))
    await _in_its_stride(ctx)
    with kernel.waiting_on_host():
        kernel.written()
        await wait_for(lambda: kernel.host_late(time.perf_counter()), 10.0, "the host late")
        seen = await _ops_per_await(ctx, 20)
    ctx.stop.set()
    await work
    assert sorted(seen)[len(seen) // 2] >= 10, seen


def test_work_is_under_way_while_any_of_it_is_nested_or_not() -> None:
    kernel = KernelWork()
    cues: list[tuple[int, bool]] = []  # (passes, runnable) at each cue
    kernel.subscribe(lambda: cues.append((kernel.active, kernel.runnable)))
    with kernel.running():
        with kernel.waiting_on_host():
            assert (kernel.active, kernel.waiting, kernel.runnable) == (1, 1, False)
        assert (kernel.active, kernel.waiting, kernel.runnable) == (1, 0, True)
    with kernel.waiting_on_host():  # a report with no pass around it
        assert kernel.under_way and not kernel.runnable
    assert (kernel.active, kernel.waiting, kernel.under_way) == (0, 0, False)
    # A pass begins; its report goes out; the answer lets the pass go on (the
    # kworker woken: the workload looks at once); a bare report goes out, and its
    # answer cues nothing, with no pass to go on.
    assert cues == [(1, True), (1, False), (1, True), (0, False)]
