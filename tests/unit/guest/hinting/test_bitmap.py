"""The seed design's bitmap policy against the in-process loopback device."""

from __future__ import annotations

import asyncio
import random

import pytest

from guest.hinting.bitmap import BitmapPolicy
from guest.hinting.device import LoopbackDevice
from guest.memory import GuestMemory
from guest.mm import MAX_ORDER, BuddyAllocator
from guest.mm.check import check_invariants
from guest.workloads.base import WorkloadContext
from guest.workloads.builtin import churn_for
from pagehint.config import HintingConfig
from tests.waiting import wait_for

RAM = 64 << 20


def make(
    device: LoopbackDevice, flush_after: float = 0.5, **kw: object
) -> tuple[BuddyAllocator, BitmapPolicy]:
    mm = BuddyAllocator(RAM)
    cfg = HintingConfig(policy="bitmap", **kw)  # type: ignore[arg-type]
    return mm, BitmapPolicy(cfg, mm, device, flush_after=flush_after)


def fill_and_free(mm: BuddyAllocator) -> None:
    held = []
    while (p := mm.alloc(0)) >= 0:
        held.append(p)
    for p in held:
        mm.free(p, 0)


def reportable_blocks(mm: BuddyAllocator, order: int = 9) -> set[tuple[int, int]]:
    return {
        (pfn, o) for z in mm.zones for o in range(order, MAX_ORDER + 1) for pfn in z.free_area[o]
    }


async def test_quiet_memory_is_all_reported_once() -> None:
    dev = LoopbackDevice(capacity=16)
    mm, pol = make(dev)
    pol.start()
    try:
        fill_and_free(mm)  # every top-order block forms by a free: 16 bits, threshold met
        want = reportable_blocks(mm)
        assert len(want) == 16
        await wait_for(lambda: set(dev.blocks) >= want, 3.0, "every reportable block reported")
        await wait_for(pol.idle, 1.0, "worker idle")
        assert mm.nr_isolated_pages == 0
        n = len(dev.blocks)
        await asyncio.sleep(1.2)  # longer than flush_after: a re-walk would show
        assert len(dev.blocks) == n, "a block that stayed free was reported twice"
        assert len(set(dev.blocks)) == len(dev.blocks)
        assert pol.stats.reported_pages == mm.nr_pages
        assert pol.new_bits == [0, 0] and pol.pending_bits() == 0
        check_invariants(mm)
    finally:
        await pol.stop()


async def test_batches_respect_capacity_and_remainder() -> None:
    dev = LoopbackDevice(capacity=5)
    mm, pol = make(dev, capacity=5, threshold=1)
    pol.start()
    try:
        fill_and_free(mm)
        await wait_for(lambda: dev.reported_pages == mm.nr_pages, 3.0, "all reported")
        sizes = [len(b) for b in dev.batches]
        assert max(sizes) <= 5
        assert sum(sizes) == 16
    finally:
        await pol.stop()


async def test_below_threshold_waits_for_flush_and_seed_mode_never_walks() -> None:
    dev = LoopbackDevice()
    mm, pol = make(dev, flush_after=0.0, threshold=16)
    pol.start()
    try:
        a = mm.alloc(MAX_ORDER)
        mm.free(a, MAX_ORDER)  # one new bit: below threshold, and flushing disabled
        await asyncio.sleep(0.3)
        assert dev.blocks == []
        assert pol.new_bits[1] == 1
    finally:
        await pol.stop()
    dev2 = LoopbackDevice()
    mm2, pol2 = make(dev2, flush_after=0.2, threshold=16)
    pol2.start()
    try:
        a = mm2.alloc(MAX_ORDER)
        mm2.free(a, MAX_ORDER)
        await wait_for(lambda: dev2.blocks == [(a, MAX_ORDER)], 2.0, "the flush to report it")
    finally:
        await pol2.stop()


async def test_putback_does_not_retrigger_hinting() -> None:
    dev = LoopbackDevice()
    mm, pol = make(dev, threshold=1)
    calls: list[int] = []
    pol.start()
    hook = pol.notify_free

    def counting(zone, order):  # type: ignore[no-untyped-def]
        calls.append(order)
        hook(zone, order)

    mm.set_hook(counting, 9)
    try:
        a = mm.alloc(MAX_ORDER)
        mm.free(a, MAX_ORDER)
        await wait_for(lambda: len(dev.blocks) == 1, 2.0, "report")
        await wait_for(pol.idle, 1.0, "idle")
        assert calls == [MAX_ORDER]  # the free; the put-back after the report did not call
        assert pol.pending_bits() == 0
    finally:
        await pol.stop()


async def test_stale_bits_are_counted_and_cleared() -> None:
    dev = LoopbackDevice()
    mm, pol = make(dev, flush_after=0.0, threshold=3)
    pol.start()
    try:
        a = mm.alloc(MAX_ORDER)
        b = mm.alloc(MAX_ORDER)
        mm.free(a, MAX_ORDER)
        mm.free(b, MAX_ORDER)
        # reallocate both chunks before the worker runs: their bits are now stale
        got = {mm.alloc(MAX_ORDER), mm.alloc(MAX_ORDER)}
        assert got == {a, b}
        c = mm.alloc(MAX_ORDER)
        mm.free(c, MAX_ORDER)  # third new bit: the worker runs
        await wait_for(lambda: pol.stats.walks >= 1 and pol.idle(), 2.0, "a walk")
        assert pol.stats.stale == 2
        assert dev.blocks == [(c, MAX_ORDER)]
        assert pol.pending_bits() == 0
    finally:
        await pol.stop()


async def test_failing_device_loses_and_leaks_nothing_then_recovers() -> None:
    dev = LoopbackDevice()
    dev.fail_next = 3
    mm, pol = make(dev, threshold=1, backoff_min=0.01, backoff_max=0.05)
    pol.start()
    try:
        fill_and_free(mm)
        await wait_for(lambda: dev.reported_pages == mm.nr_pages, 5.0, "recovery")
        assert pol.stats.failures == 3
        assert mm.nr_isolated_pages == 0
        assert mm.nr_free_pages == mm.nr_pages
        check_invariants(mm)
    finally:
        await pol.stop()


async def test_timeout_counts_as_failure_and_returns_pages() -> None:
    dev = LoopbackDevice(delay=1.0)
    mm, pol = make(dev, threshold=1, report_timeout=0.05, backoff_min=10)
    pol.start()
    try:
        a = mm.alloc(MAX_ORDER)
        mm.free(a, MAX_ORDER)
        await wait_for(lambda: pol.stats.failures == 1, 2.0, "a timeout")
        assert mm.nr_isolated_pages == 0
        assert mm.is_free(a, MAX_ORDER)
        assert dev.blocks == []
    finally:
        await pol.stop()


async def test_stop_during_a_report_puts_pages_back() -> None:
    # stop() lets a report finish, but only within its timeout: this one never
    # would, so it is given up and its pages go back.
    dev = LoopbackDevice(delay=5.0)
    mm, pol = make(dev, threshold=1, report_timeout=0.3)
    pol.start()
    a = mm.alloc(MAX_ORDER)
    mm.free(a, MAX_ORDER)
    await wait_for(lambda: mm.nr_isolated_pages > 0, 2.0, "isolation")
    await pol.stop()
    assert mm.nr_isolated_pages == 0
    check_invariants(mm)


async def test_stop_lets_an_in_flight_report_finish_so_guest_and_host_agree() -> None:
    # The host may already have a chain that is in flight: abandoning it would leave
    # the host counting (and discarding) what the guest puts back as unreported.
    dev = LoopbackDevice(delay=0.2)
    mm, pol = make(dev, threshold=1)
    pol.start()
    a = mm.alloc(MAX_ORDER)
    mm.free(a, MAX_ORDER)
    await wait_for(lambda: dev.in_flight > 0, 2.0, "a report in flight")
    await pol.stop()
    assert dev.blocks == [(a, MAX_ORDER)]
    assert pol.stats.reported_pages == dev.reported_pages
    assert mm.nr_isolated_pages == 0
    check_invariants(mm)


@pytest.mark.parametrize("seed", range(12))
async def test_churn_never_gets_an_isolated_page_during_slow_reports(seed: int) -> None:
    dev = LoopbackDevice(delay=0.02)
    mm, pol = make(dev, threshold=2, flush_after=0.1)
    memory = GuestMemory(mm)
    violations: list[str] = []

    def check_alloc(pfn: int, order: int) -> None:
        end = pfn + (1 << order)
        for ipfn, iorder in pol.in_flight:
            if ipfn < end and pfn < ipfn + (1 << iorder):
                violations.append(f"alloc {pfn:#x}/{order} overlaps isolated {ipfn:#x}/{iorder}")

    memory.on_alloc.append(check_alloc)
    ctx = WorkloadContext(memory, seed=seed)
    rng = random.Random(seed)

    def grab_everything(batch: object) -> None:
        # While a report is in flight, allocate all that can be allocated (random
        # orders, so big free blocks are split too), check, then give it back.
        grabbed = []
        for order in (rng.randint(0, MAX_ORDER) for _ in range(64)):
            while (p := memory.alloc(order)) >= 0:
                grabbed.append((p, order))
        while (p := memory.alloc(0)) >= 0:
            grabbed.append((p, 0))
        for p, order in grabbed:
            memory.free(p, order)

    dev.on_report = grab_everything
    pol.start()

    async def hog_cycles() -> None:
        # big allocations freed again: they make reportable blocks for the worker
        for _ in range(4):
            await ctx.alloc_bytes("hog", 24 << 20, 0)
            await asyncio.sleep(0.02)
            await ctx.free_group("hog")
            await asyncio.sleep(0.08)

    churner = asyncio.create_task(churn_for(ctx, 0.2, 100_000, seconds=0.6))
    await hog_cycles()
    await churner
    await wait_for(lambda: pol.stats.reports > 0, 2.0, "some reports")
    await pol.stop()
    assert not violations, violations[:3]
    assert mm.nr_isolated_pages == 0
    assert pol.stats.isolated_peak_pages > 0
    check_invariants(mm)
