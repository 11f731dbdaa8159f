"""The seed design's bitmap policy against the in-process loopback device."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import pytest

from guest.hinting.bitmap import BitmapPolicy
from guest.hinting.device import LoopbackDevice
from guest.memory import GuestMemory
from guest.mm import MAX_ORDER, BuddyAllocator
from guest.mm.check import check_invariants
from guest.workloads.base import WorkloadContext
from guest.workloads.builtin import churn_for
from pagehint.config import BARE_MEMORY, HintingConfig
from tests.blocks import isolated_block
from tests.waiting import wait_for

RAM = 64 << 20
# Isolation obeys each zone's min watermark (__isolate_free_page): of a fully free
# 64 MiB guest reported 16 blocks at a time, the last top-order block of each zone
# (DMA, DMA32) stays unreported; 5 at a time, only DMA's last (its 4 blocks share a batch).
PROTECTED_PAGES = 2 << MAX_ORDER
PROTECTED_PAGES_BY_5 = 1 << MAX_ORDER


def make(
    device: LoopbackDevice, flush_after: float = 0.0, **kw: object
) -> tuple[BuddyAllocator, BitmapPolicy]:
    mm = BuddyAllocator(RAM, model=BARE_MEMORY)
    cfg = HintingConfig(policy="bitmap", bitmap_flush_after=flush_after, **kw)  # type: ignore[arg-type]
    return mm, BitmapPolicy(cfg, mm, device)


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
    mm, pol = make(dev, threshold=4)
    pol.start()
    try:
        fill_and_free(mm)  # every top-order block forms by a free: 16 bits, threshold met
        want = reportable_blocks(mm)
        assert len(want) == 16
        await wait_for(lambda: len(dev.blocks) == 14, 3.0, "every isolatable block reported")
        await wait_for(pol.idle, 1.0, "worker idle")
        assert set(dev.blocks) <= want
        assert pol.stats.isolation_refused == 2
        assert mm.nr_isolated_pages == 0
        n = len(dev.blocks)
        await asyncio.sleep(0.5)  # a re-walk would show
        assert len(dev.blocks) == n, "a block that stayed free was reported twice"
        assert len(set(dev.blocks)) == len(dev.blocks)
        assert pol.stats.reported_pages == mm.nr_pages - PROTECTED_PAGES
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
        await wait_for(
            lambda: dev.reported_pages == mm.nr_pages - PROTECTED_PAGES_BY_5, 3.0, "all reported"
        )
        sizes = [len(b) for b in dev.batches]
        assert max(sizes) <= 5
        assert sum(sizes) == 15
    finally:
        await pol.stop()


async def test_v10_below_threshold_never_walks_unless_the_flush_departure_is_on() -> None:
    dev = LoopbackDevice()
    mm, pol = make(dev, threshold=16)  # v10: no timer at all
    pol.start()
    try:
        a = mm.alloc(MAX_ORDER)
        mm.free(a, MAX_ORDER)  # one new bit: below threshold
        await asyncio.sleep(0.3)
        assert dev.blocks == []
        assert pol.new_bits[1] == 1
        assert pol.idle(), "bits below the threshold are not pending work in v10"
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


async def test_v10_walks_only_the_zones_that_reached_the_threshold() -> None:
    # 64 MiB: DMA holds 4 top-order blocks, DMA32 12. At threshold 8 only DMA32 is walked.
    dev = LoopbackDevice()
    mm, pol = make(dev, threshold=8)
    pol.start()
    try:
        fill_and_free(mm)
        _dma, dma32 = mm.zones
        await wait_for(lambda: len(dev.blocks) == 11 and pol.idle(), 2.0, "DMA32 walked")
        assert all(dma32.contains(p) for p, _ in dev.blocks)
        assert pol.new_bits == [4, 0]
        assert pol.bitmaps[0].count(1) == 4, "DMA's bits wait for more frees"
        await asyncio.sleep(0.2)
        assert len(dev.blocks) == 11
    finally:
        await pol.stop()


async def test_v10_batches_are_per_zone_with_the_leftover_flushed_at_each_zone_end() -> None:
    dev = LoopbackDevice(capacity=5)
    mm, pol = make(dev, threshold=1, capacity=5)
    pol.start()
    try:
        fill_and_free(mm)
        await wait_for(
            lambda: dev.reported_pages == mm.nr_pages - PROTECTED_PAGES_BY_5, 3.0, "all reported"
        )
        zones = mm.zones
        for batch in dev.batches:
            owners = {next(z.index for z in zones if z.contains(p)) for p, _ in batch}
            assert len(owners) == 1, f"a batch mixes zones: {batch}"
        assert sorted(len(b) for b in dev.batches) == [2, 3, 5, 5]
    finally:
        await pol.stop()


async def test_cross_zone_departure_batches_across_zones() -> None:
    dev = LoopbackDevice(capacity=16)
    mm, pol = make(dev, threshold=8, bitmap_cross_zone=True)
    pol.start()
    try:
        fill_and_free(mm)
        await wait_for(
            lambda: dev.reported_pages == mm.nr_pages - PROTECTED_PAGES, 3.0, "all reported"
        )
        assert [len(b) for b in dev.batches] == [14]
    finally:
        await pol.stop()


async def test_v10_reconciles_the_bit_count_after_a_walk() -> None:
    # Bits set during a walk, ahead of it, are counted by the hook and visited by the
    # same walk: v10 subtracts them afterwards, so the count stays equal to the bits
    # still set and no empty walk follows.
    dev = LoopbackDevice(capacity=1)
    mm, pol = make(dev, threshold=2, capacity=1)
    dma32 = mm.zones[1]
    blocks = [mm.alloc(MAX_ORDER) for _ in range(16)]
    mine = sorted(p for p in blocks if dma32.contains(p))
    freed_during = mine[-3:]

    def free_ahead(batch: object) -> None:
        dev.on_report = None
        for p in freed_during:
            mm.free(p, MAX_ORDER)

    dev.on_report = free_ahead
    pol.start()
    try:
        mm.free(mine[0], MAX_ORDER)
        mm.free(mine[1], MAX_ORDER)  # threshold: the walk starts
        await wait_for(lambda: len(dev.blocks) == 5 and pol.idle(), 2.0, "one walk, 5 blocks")
        assert pol.new_bits == [0, 0]
        assert pol.pending_bits() == 0
        await asyncio.sleep(0.1)
        assert pol.stats.walks == 1, "an empty extra walk means the count was not reconciled"
    finally:
        await pol.stop()


async def test_v10_isolation_obeys_the_min_watermark() -> None:
    dev = LoopbackDevice(delay=0.3)
    mm, pol = make(dev, threshold=2)
    dma32 = mm.zones[1]
    blocks = [mm.alloc(MAX_ORDER) for _ in range(16)]
    mine = [p for p in blocks if dma32.contains(p)]
    low_isolated: list[int] = []
    dev.on_report = lambda batch: low_isolated.append(dma32.nr_free_pages)
    pol.start()
    try:
        mm.free(mine[0], MAX_ORDER)
        mm.free(mine[1], MAX_ORDER)
        await wait_for(lambda: pol.stats.reports == 1 and pol.idle(), 3.0, "the walk")
        # 2048 free pages, min watermark 192: the first block leaves 1024 free; the
        # second would leave 0, at or below min + 1024, and is refused.
        assert dma32.wmark_min == 192
        assert len(dev.blocks) == 1
        assert pol.stats.isolation_refused == 1
        assert min(low_isolated) > dma32.wmark_min
    finally:
        await pol.stop()


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


async def test_v10_ignores_a_failed_report_pages_back_bits_dropped() -> None:
    dev = LoopbackDevice()
    dev.fail_next = 1
    mm, pol = make(dev, threshold=1)
    pol.start()
    try:
        a = mm.alloc(MAX_ORDER)
        mm.free(a, MAX_ORDER)
        await wait_for(lambda: pol.stats.failures == 1 and pol.idle(), 2.0, "the failure")
        await asyncio.sleep(0.2)
        assert dev.attempts == 1, "v10 does not retry a failed report"
        assert pol.pending_bits() == 0
        assert mm.is_free(a, MAX_ORDER) and mm.nr_isolated_pages == 0
        assert pol.stats.failures_by_reason == {"injected": 1}
    finally:
        await pol.stop()


async def test_retry_departure_loses_and_leaks_nothing_then_recovers() -> None:
    dev = LoopbackDevice()
    dev.fail_next = 3
    mm, pol = make(dev, threshold=1, bitmap_retry=True, backoff_min=0.01, backoff_max=0.05)
    pol.start()
    try:
        fill_and_free(mm)
        await wait_for(lambda: dev.reported_pages == mm.nr_pages - PROTECTED_PAGES, 5.0, "recovery")
        assert pol.stats.failures == 3
        assert mm.nr_isolated_pages == 0
        assert mm.nr_free_pages == mm.nr_pages
        check_invariants(mm)
    finally:
        await pol.stop()


async def test_a_slow_report_keeps_its_blocks_isolated_however_long_it_takes() -> None:
    # No timeout puts blocks back while the device may still discard them.
    dev = LoopbackDevice(delay=1.0)
    mm, pol = make(dev, threshold=1)
    pol.start()
    try:
        a = mm.alloc(MAX_ORDER)
        mm.free(a, MAX_ORDER)
        await wait_for(lambda: dev.in_flight == 1, 2.0, "the report")
        await asyncio.sleep(0.7)
        assert mm.block_at(a).state == "isolated"
        await wait_for(lambda: pol.stats.reports == 1, 2.0, "the answer")
        assert mm.is_free(a, MAX_ORDER)
        assert pol.stats.failures == 0
    finally:
        await pol.stop()


async def test_stop_abandons_an_unanswered_report_with_its_blocks_still_isolated() -> None:
    dev = LoopbackDevice(delay=30.0)
    mm, pol = make(dev, threshold=1, stop_grace=0.2)
    pol.start()
    a = mm.alloc(MAX_ORDER)
    mm.free(a, MAX_ORDER)
    await wait_for(lambda: dev.in_flight == 1, 2.0, "the report")
    await asyncio.wait_for(pol.stop(), 2.0)
    assert mm.block_at(a).state == "isolated", "never put back while the device may discard it"
    assert pol.stats.abandoned_reports == 1
    assert pol.abandoned == [(a, MAX_ORDER)]
    assert mm.nr_free_pages + mm.allocated_pages + mm.nr_isolated_pages == mm.nr_pages


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
        # (2 MiB blocks: page by page, the churn's pages interleaved with the hog's
        # as the loop switched between them, and some seeds freed no whole block)
        for _ in range(4):
            await ctx.alloc_bytes("hog", 24 << 20, 9)
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


async def test_stop_mid_walk_puts_unsent_isolated_blocks_back() -> None:
    # A big walk yields every 256 bits with a partly filled batch of isolated blocks:
    # a stop there must not leave them off the free lists.
    mm = BuddyAllocator(4 << 30, model=BARE_MEMORY)
    dev = LoopbackDevice(capacity=100)
    cfg = HintingConfig(policy="bitmap", capacity=100, threshold=4)
    pol = BitmapPolicy(cfg, mm, dev)
    held = [mm.alloc(9) for _ in range(1200)]
    pol.start()
    for p in held[::2]:
        mm.free(p, 9)  # 600 separate order-9 blocks: 600 bits, no merging
    for _ in range(100_000):  # bounded: step the loop until the walk yields mid-batch
        await asyncio.sleep(0)
        if mm.nr_isolated_pages > 0 and not pol.in_flight:
            break
    else:
        raise AssertionError("the walk never yielded with a partial batch")
    await pol.stop()
    assert mm.nr_isolated_pages == 0
    check_invariants(mm)


class _GatedDevice(LoopbackDevice):
    """Answers a report when its gate opens, noting the loop pass it answered in."""

    def __init__(self, passes: list[int]) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.passes = passes
        self.answered_in = -1

    async def report(self, batch: Sequence[tuple[int, int]]) -> None:
        await self.gate.wait()
        self.answered_in = self.passes[0]
        self.batches.append(list(batch))


async def test_the_policy_books_a_report_in_the_loop_pass_after_the_device_answers() -> None:
    # On a loop shared by a hundred busy guests each pass is long: an answer that
    # takes extra passes to reach the policy is a slower ack (shield took one more).
    passes = [0]
    dev = _GatedDevice(passes)
    mm, pol = make(dev, threshold=1)
    booked_in = -1

    async def ticker() -> None:
        nonlocal booked_in
        while booked_in < 0:
            passes[0] += 1
            if pol.stats.reports:
                booked_in = passes[0]
            await asyncio.sleep(0)

    pol.start()
    try:
        a = mm.alloc(MAX_ORDER)
        mm.free(a, MAX_ORDER)
        await wait_for(lambda: bool(pol.in_flight), 2.0, "the report")
        tick = asyncio.create_task(ticker())
        dev.gate.set()
        await asyncio.wait_for(tick, 2.0)
        # The policy wakes in the next pass; the ticker, ahead of it in that pass's
        # queue, sees the booking one pass later still.
        assert booked_in - dev.answered_in <= 2
    finally:
        await pol.stop()


class _BuggyDevice(LoopbackDevice):
    async def report(self, batch: Sequence[tuple[int, int]]) -> None:
        raise RuntimeError("a bug in the device")


async def test_a_device_bug_leaves_its_blocks_isolated_and_shows() -> None:
    # Not a refusal (ReportError): the device never said it is done with the blocks.
    mm, pol = make(_BuggyDevice())
    block = isolated_block(mm)
    with pytest.raises(RuntimeError, match="a bug in the device"):
        await pol.report_batch([block], mark=True, to_tail=True)
    assert mm.block_at(block[0]).state == "isolated"
    assert pol.abandoned == [block]
    assert pol.in_flight == []
    assert (pol.kernel_work.active, pol.kernel_work.waiting) == (0, 0)  # not left under way


async def test_a_report_task_cancelled_before_it_ran_does_not_hang_its_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Cancelled before its first step, the report never ran the code that wakes the
    # policy: the task's end must wake it all the same.
    real = asyncio.ensure_future

    def cancelled_at_once(coro: Any) -> Any:
        task = real(coro)
        task.cancel()
        return task

    mm, pol = make(LoopbackDevice())
    block = isolated_block(mm)
    monkeypatch.setattr("guest.hinting.base.asyncio.ensure_future", cancelled_at_once)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(pol.report_batch([block], mark=True, to_tail=True), 2.0)
    assert mm.block_at(block[0]).state == "isolated", "the device may hold them: kept"
    assert (pol.kernel_work.active, pol.kernel_work.waiting) == (0, 0)


class _LateBugDevice(LoopbackDevice):
    async def report(self, batch: Sequence[tuple[int, int]]) -> None:
        await asyncio.sleep(0.3)
        raise RuntimeError("late bug after abandon")


async def test_an_abandoned_report_that_ends_in_a_bug_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mm, pol = make(_LateBugDevice(), threshold=1, stop_grace=0.05)
    pol.start()
    a = mm.alloc(MAX_ORDER)
    mm.free(a, MAX_ORDER)
    await wait_for(lambda: bool(pol.in_flight), 2.0, "the report")
    await asyncio.wait_for(pol.stop(), 2.0)
    assert pol.stats.abandoned_reports == 1
    assert (pol.kernel_work.active, pol.kernel_work.waiting) == (0, 0)
    await wait_for(lambda: "late bug after abandon" in caplog.text, 2.0, "the late bug in the log")


async def test_a_walk_is_kernel_work_from_its_start_to_its_end() -> None:
    """guest/sched.py: the workload yields to the hinting work under way, its walk
    and its reports alike; while the worker waits for bits, it does not."""
    dev = LoopbackDevice(capacity=16)
    mm, pol = make(dev, threshold=4)
    seen: list[tuple[int, int]] = []
    report = dev.report

    async def watched(batch: Sequence[tuple[int, int]]) -> None:
        seen.append((pol.kernel_work.active, pol.kernel_work.waiting))
        await report(batch)

    dev.report = watched  # type: ignore[method-assign]
    pol.start()
    try:
        assert pol.kernel_work.active == 0
        fill_and_free(mm)
        await wait_for(lambda: len(dev.blocks) == 14, 3.0, "every isolatable block reported")
        await wait_for(pol.idle, 1.0, "worker idle")
        # The walk, and its report out with the host.
        assert seen and all(n == (1, 1) for n in seen), seen
        assert (pol.kernel_work.active, pol.kernel_work.waiting) == (0, 0)
    finally:
        await pol.stop()
