"""The guest under a host with its own memory model (issue 23), through the fake host:
the offer, numbered touch batches flushed at once, Notices (evicted frames told again,
delays the workload really waits), the shm gate, and the OOM kill."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from guest.balloon import BalloonDriver
from guest.balloon.connection import OomKilled
from guest.hinting.device import ReportError
from guest.memory import GuestMemory
from guest.mm import MAX_ORDER, BuddyAllocator
from guest.mm.constants import PAGE_SIZE
from guest.ram import SharedRam
from guest.workloads.base import WorkloadContext
from pagehint.config import BARE_MEMORY
from tests.blocks import isolated_block
from tests.unit.guest.balloon.fakehost import FakeHost
from tests.unit.guest.balloon.test_driver import RAM, config
from tests.waiting import wait_for as _wait_for
from virtqueue.codec import NoticeMsg

N = 1 << MAX_ORDER  # pages in a top-order block
Setup = tuple[FakeHost, BalloonDriver, BuddyAllocator]


async def wait_for(cond: Callable[[], bool], timeout: float) -> None:
    await _wait_for(cond, timeout, getattr(cond, "__name__", "a condition"))


async def started(host: FakeHost, **kw: object) -> tuple[BalloonDriver, BuddyAllocator]:
    mm = BuddyAllocator(RAM, model=BARE_MEMORY)
    # A flush timer far longer than any test: only the prompt flush can send touches.
    driver = BalloonDriver(config(touch_flush_seconds=60.0, **kw), mm, host)
    await driver.start()
    return driver, mm


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    host = FakeHost()
    host.host_memory = True
    driver, mm = await started(host)
    try:
        yield host, driver, mm
    finally:
        await driver.stop()


def touched_pfns(host: FakeHost) -> list[tuple[int, int]]:
    return [(p, c) for t in host.touched for p, c in zip(t.pfns, t.counts, strict=True)]


async def test_the_guest_offers_host_memory_and_a_host_without_it_changes_nothing() -> None:
    host = FakeHost()  # a host without --host-memory
    driver, mm = await started(host)
    try:
        assert host.negotiations[0].host_memory is True
        assert driver.accepted is not None and driver.accepted.host_memory is False
        assert not driver.link.host_memory
        pfn = mm.alloc(0)
        driver.link.on_alloc(pfn, 0)
        await driver.link.flush_touches()
        # sim backend: touches as before, unnumbered
        assert [t.seq for t in host.touched] == [0]
    finally:
        await driver.stop()


async def test_touch_batches_are_numbered_and_flushed_at_once(setup: Setup) -> None:
    host, driver, mm = setup
    assert driver.link.host_memory
    for n in range(1, 4):
        pfn = mm.alloc(0)
        driver.link.on_alloc(pfn, 0)
        # no flush call and a 60 s timer: the driver sends within a loop turn or two
        await wait_for(lambda n=n: len(host.touched) == n, timeout=5)
    assert [t.seq for t in host.touched] == [1, 2, 3]
    assert driver.link.settled_runs == driver.link.touches.runs_created  # each one settled


async def test_evicted_frames_are_reported_again_on_their_next_touch(setup: Setup) -> None:
    host, driver, mm = setup
    pfn = mm.alloc(4)
    driver.link.on_alloc(pfn, 4)
    await wait_for(lambda: (pfn, 16) in touched_pfns(host), timeout=5)
    host.touched.clear()
    # touched again while the host holds it: nothing to say
    driver.link.on_alloc(pfn, 4)
    await asyncio.sleep(0.05)
    assert host.touched == []
    # the host swaps four of its frames out: the next touch must be told
    host.notice(NoticeMsg([(pfn + 4, 4)], 0, 0, 0, 0))
    await wait_for(lambda: driver.link.touches.host_has[pfn + 4] == 0, timeout=5)
    driver.link.on_alloc(pfn, 4)
    await wait_for(lambda: touched_pfns(host) == [(pfn, 16)], timeout=5)


async def test_a_notices_delay_makes_the_workload_wait(setup: Setup) -> None:
    host, driver, mm = setup
    ctx = WorkloadContext(GuestMemory(mm))
    driver.link.on_fault_delay.append(ctx.add_fault_debt)
    host.delay_us = 300_000  # each batch's swap-ins cost 0.3 s
    pfn = mm.alloc(0)
    driver.link.on_alloc(pfn, 0)
    await wait_for(lambda: ctx.fault_debt > 0, timeout=5)
    t0 = time.monotonic()
    await ctx.tick()  # the next operation waits first
    assert time.monotonic() - t0 >= 0.25
    assert ctx.fault_wait_seconds == pytest.approx(0.3, abs=0.01)
    assert ctx.fault_debt == 0
    # and the operation after that does not wait again
    t0 = time.monotonic()
    await ctx.tick()
    assert ctx.fault_wait_seconds == pytest.approx(0.3, abs=0.01)
    assert driver.link.fault_delay_seconds == pytest.approx(0.3)


async def test_fault_debt_slows_a_busy_workload(setup: Setup) -> None:
    """Counted, not timed: a workload charged 0.05 s per batch does a handful of
    operations in 0.5 s where one without a debt does thousands."""
    host, driver, mm = setup
    memory = GuestMemory(mm)
    memory.on_alloc.append(driver.link.on_alloc)
    ctx = WorkloadContext(memory)
    driver.link.on_fault_delay.append(ctx.add_fault_debt)
    host.delay_us = 50_000

    async def churn() -> int:
        ops = 0
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            pfn = memory.alloc(0)
            driver.link.touches.evicted([(pfn, 1)])  # as if swapped each time: a fault per op
            memory.free(pfn, 0)
            ops += 1
            await ctx.tick()
            await asyncio.sleep(0)
        return ops

    slow = await churn()
    assert ctx.fault_wait_seconds > 0.2
    host.delay_us = 0
    await asyncio.sleep(0.1)
    ctx.fault_debt = 0
    fast = await churn()
    assert slow * 5 < fast, (slow, fast)


async def test_an_oom_kill_ends_the_guest_without_reconnecting(setup: Setup) -> None:
    host, driver, mm = setup
    stopped: list[BaseException] = []
    driver.conn.on_fatal.append(stopped.append)
    host.hold = True  # a chain in flight when the killer strikes
    pfn, order = isolated_block(mm)
    report = asyncio.ensure_future(driver.report([(pfn, order)]))
    await wait_for(lambda: host.chains_received == 1, timeout=5)
    host.oom_kill()
    await wait_for(lambda: bool(stopped), timeout=5)
    assert isinstance(driver.fatal, OomKilled) and driver.fatal.exit_status == 3
    assert str(driver.fatal).startswith("killed by the host's OOM killer (oom_badness")
    # the host ended the session and freed its memory: the chain is settled, not left
    with pytest.raises(ReportError):
        await asyncio.wait_for(report, 5)
    await asyncio.sleep(0.2)  # well past reconnect_max
    assert len(host.negotiations) == 1


# ---- shm: accesses wait for the Notice that settles their frames -------------------------


def shared(tmp_path: Path, mm: BuddyAllocator) -> SharedRam:
    path = tmp_path / "g-00000001.ram"
    with path.open("wb") as f:
        f.truncate(mm.ram_bytes)
    path.chmod(0o600)
    return SharedRam(str(path), mm, "g", None, folder=str(tmp_path))


async def test_shm_reads_a_swapped_block_only_after_the_host_brought_it_back(
    tmp_path: Path,
) -> None:
    host = FakeHost()
    host.host_memory = True
    host.backend_name = "shm"
    driver, mm = await started(host)
    ram = shared(tmp_path, mm)
    ram.follow(driver.link, gated=True)
    try:
        assert driver.link.gated
        pfn = mm.alloc(MAX_ORDER)
        ram.on_alloc(pfn, MAX_ORDER)
        await wait_for(lambda: ram.waiting == 0, timeout=5)  # stamped once settled
        # the host swaps the block out: its bytes go to swap, the file has a hole
        lo, hi = pfn * PAGE_SIZE, (pfn + N) * PAGE_SIZE
        swap = bytes(ram.map[lo:hi])
        ram.map[lo:hi] = bytes(hi - lo)
        host.settle_touches = False
        host.touched.clear()
        host.notice(NoticeMsg([(pfn, N)], 0, 0, 0, 0))
        await wait_for(lambda: driver.link.touches.host_has[pfn] == 0, timeout=5)
        # the guest frees it: its check must wait for the swap-in
        ram.on_free(pfn, MAX_ORDER)
        mm.free(pfn, MAX_ORDER)
        assert ram.waiting == 1
        await wait_for(lambda: bool(host.touched) and host.touched[-1].seq > 0, timeout=5)
        seq = host.touched[-1].seq
        assert (pfn, N) in touched_pfns(host)
        # a chain of that very block waits for the swap-in too (never discarded unread)
        mm.isolate(pfn, MAX_ORDER)
        report = asyncio.ensure_future(driver.report([(pfn, MAX_ORDER)]))
        await asyncio.sleep(0.05)
        assert host.chains_received == 0
        ram.map[lo:hi] = swap  # the host copies it back, then settles the batch
        host.notice(NoticeMsg([], seq, 85 * N, N, 0))
        await asyncio.wait_for(report, 5)
        assert ram.waiting == 0 and ram.data_loss_pages == 0 and ram.pages_checked == N
        assert driver.link.major_faults == N
    finally:
        await driver.stop()
        ram.close()


async def test_shm_without_host_memory_neither_tracks_nor_waits(tmp_path: Path) -> None:
    host = FakeHost()
    host.backend_name = "shm"  # a host without --host-memory: as before
    driver, mm = await started(host)
    try:
        assert not driver.link.gated and not driver.link.touches.enabled
        pfn = mm.alloc(0)
        driver.link.on_alloc(pfn, 0)
        assert driver.link.gate(pfn, 0) == 0 and not driver.link.touches.runs
    finally:
        await driver.stop()


async def test_an_eviction_is_acknowledged_ahead_of_later_touches_and_waiting_accesses_rewait(
    tmp_path: Path,
) -> None:
    """A Notice with an evict_id: the guest's next write acknowledges it before any
    touch made since (the host moves the bytes at the acknowledgement), and an access
    that was waiting on an earlier touch of an evicted block waits again, for a new
    touch of that block, not for the old one's settling."""
    host = FakeHost()
    host.host_memory = True
    host.backend_name = "shm"
    driver, mm = await started(host)
    ram = shared(tmp_path, mm)
    ram.follow(driver.link, gated=True)
    try:
        host.settle_touches = False
        pfn = mm.alloc(MAX_ORDER)
        ram.on_alloc(pfn, MAX_ORDER)  # its stamp waits for this touch's Notice
        await wait_for(lambda: bool(host.touched) and host.touched[-1].seq > 0, timeout=5)
        first = host.touched[-1].seq
        assert ram.waiting == 1
        host.touched.clear()
        # Before settling it the host evicts that very block (another guest's touch).
        host.notice(NoticeMsg([(pfn, N)], 0, 0, 0, 0, evict_id=7))
        await wait_for(lambda: len(host.touched) >= 1, timeout=5)
        ack = host.touched[0]
        assert ack.evict_ack == 7 and all(t.evict_ack == 0 for t in host.touched[1:])
        await wait_for(lambda: (pfn, N) in touched_pfns(host), timeout=5)
        again = max(t.seq for t in host.touched)
        assert again > first
        # The old batch settles: the stamp still waits (its block was evicted since).
        host.notice(NoticeMsg([], first, 0, 0, N, 0))
        await asyncio.sleep(0.05)
        assert ram.waiting == 1
        host.notice(NoticeMsg([], again, 0, N, 0, 0))  # brought back: now it runs
        await wait_for(lambda: ram.waiting == 0, timeout=5)
        assert ram.data_loss_pages == 0
    finally:
        await driver.stop()
        ram.close()


async def test_a_chain_waits_for_the_check_an_eviction_re_gated(tmp_path: Path) -> None:
    """A block freed while a touch is unsettled has its check deferred, and a chain
    reporting it waits for that touch; an eviction Notice naming the block re-gates
    the check onto a new touch. The chain must wait for that one too: written when
    the first settles, the host discarded the block before the check read it back
    (data loss in about one run in four, on shm with swap)."""
    host = FakeHost()
    host.host_memory = True
    host.backend_name = "shm"
    driver, mm = await started(host)
    ram = shared(tmp_path, mm)
    ram.follow(driver.link, gated=True)
    try:
        b = mm.alloc(MAX_ORDER)
        ram.on_alloc(b, MAX_ORDER)
        await wait_for(lambda: ram.waiting == 0, timeout=5)
        host.settle_touches = False
        host.touched.clear()
        c = mm.alloc(MAX_ORDER)
        ram.on_alloc(c, MAX_ORDER)  # a touch now out, unsettled
        await wait_for(lambda: bool(host.touched) and host.touched[-1].seq > 0, timeout=5)
        first = host.touched[-1].seq
        ram.on_free(b, MAX_ORDER)  # its check waits behind that touch
        mm.free(b, MAX_ORDER)
        assert ram.waiting == 2
        mm.isolate(b, MAX_ORDER)
        report = asyncio.ensure_future(driver.report([(b, MAX_ORDER)]))
        await asyncio.sleep(0.05)
        assert host.chains_received == 0
        host.touched.clear()
        host.notice(NoticeMsg([(b, N)], 0, 0, 0, 0, evict_id=1))  # b evicted
        host.notice(NoticeMsg([], first, 0, 0, 0, 0))  # then the first touch settles
        # The chain's writer sends the acknowledgement and b's new touch, and waits on.
        await wait_for(lambda: (b, N) in touched_pfns(host), timeout=5)
        assert host.touched[0].evict_ack == 1
        again = max(t.seq for t in host.touched)
        await asyncio.sleep(0.1)
        assert host.chains_received == 0  # b's check has not read it back yet
        host.notice(NoticeMsg([], again, 0, N, 0, 0))  # b back: its check reads it
        await asyncio.wait_for(report, 5)
        assert host.chains_received == 1 and ram.data_loss_pages == 0 and ram.waiting == 0
    finally:
        await driver.stop()
        ram.close()
