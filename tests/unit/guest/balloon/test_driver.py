"""The balloon driver's fault paths, through the transport seam (no processes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from guest.balloon import BalloonDriver
from guest.balloon.connection import NegotiationRefused
from guest.hinting.device import ReportError
from guest.hinting.registry import make_policy
from guest.mm import MAX_ORDER, BuddyAllocator
from guest.sched import HOST_LATE_S, KernelWork
from pagehint.config import BARE_MEMORY, GuestConfig, HintingConfig
from pagehint.errors import UsageError
from tests.blocks import isolated_block
from tests.logs import log_lines
from tests.unit.guest.balloon.fakehost import FakeHost
from tests.waiting import wait_for

RAM = 64 << 20


def config(**kw: object) -> GuestConfig:
    hinting = HintingConfig(policy="reporting", capacity=kw.pop("capacity", None))  # type: ignore[arg-type]
    base: dict[str, object] = {
        "ram_bytes": RAM,
        "guest_id": "g",
        "reconnect_min": 0.01,
        "reconnect_max": 0.05,
        "connect_timeout": 2.0,
        "hinting": hinting,
    }
    base.update(kw)
    return GuestConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
async def setup() -> AsyncIterator[tuple[FakeHost, BalloonDriver, BuddyAllocator, list[str]]]:
    host = FakeHost()
    mm = BuddyAllocator(RAM, model=BARE_MEMORY)
    lines = log_lines()
    driver = BalloonDriver(config(stall_warning=0.2), mm, transport=host)
    await driver.start()
    try:
        yield host, driver, mm, lines
    finally:
        await driver.stop()


async def test_done(setup: tuple[FakeHost, BalloonDriver, BuddyAllocator, list[str]]) -> None:
    host, driver, mm, _ = setup
    await driver.report([isolated_block(mm)])
    assert host.device.metrics.chains == 1
    assert driver.view.acked_pages_this_host == 1 << MAX_ORDER


async def test_the_policys_kernel_work_hears_when_the_chain_is_on_the_stream(
    setup: tuple[FakeHost, BalloonDriver, BuddyAllocator, list[str]],
) -> None:
    # HOST_LATE_S counts from the write: the guest's own send (behind its touches)
    # is not the host being late.
    host, driver, mm, _ = setup
    host.hold = True
    kernel = KernelWork()
    driver.on_chain_written = kernel.written
    with kernel.waiting_on_host():
        assert not kernel.host_late(time.perf_counter() + 3600)
        report = asyncio.create_task(driver.report([isolated_block(mm)]))
        late = HOST_LATE_S + 0.01
        await wait_for(lambda: kernel.host_late(time.perf_counter() + late), 5.0, "the write")
        host.release()
        await asyncio.wait_for(report, 5.0)
    assert host.device.metrics.chains == 1


async def test_a_refused_chain_fails_alone_and_the_stream_survives(
    setup: tuple[FakeHost, BalloonDriver, BuddyAllocator, list[str]],
) -> None:
    host, driver, mm, _ = setup
    with pytest.raises(ReportError) as e:
        await driver.report([(mm.nr_pages, 0)])  # outside guest RAM
    assert e.value.reason == "out_of_range"
    await driver.report([isolated_block(mm)])
    assert driver.connects == 1, "a refusal must not cost the connection"
    assert host.device.metrics.refusals["out_of_range"] == 1


async def test_a_late_answer_is_waited_for_with_no_timeout(
    setup: tuple[FakeHost, BalloonDriver, BuddyAllocator, list[str]],
) -> None:
    host, driver, mm, lines = setup
    host.hold = True
    report = asyncio.create_task(driver.report([isolated_block(mm)]))
    await asyncio.sleep(0.7)
    assert not report.done()
    assert driver.oldest_report_age() >= 0.6
    assert any("unanswered for" in line for line in lines), lines
    host.release()
    await asyncio.wait_for(report, 1.0)
    assert host.device.metrics.chains == 1


async def test_broken_stream_strands_the_chain_until_the_fence_cancels_it(
    setup: tuple[FakeHost, BalloonDriver, BuddyAllocator, list[str]],
) -> None:
    host, driver, mm, _ = setup
    host.hold = True
    host.down = True  # the reconnect cannot happen yet: nothing can settle the chain
    report = asyncio.create_task(driver.report([isolated_block(mm)]))
    await wait_for(lambda: host.chains_received == 1, 1.0, "the chain at the host")
    host.break_streams()
    await asyncio.sleep(0.5)
    assert not report.done(), "a stranded chain is settled only by a fence"
    host.down = False
    with pytest.raises(ReportError) as e:
        await asyncio.wait_for(report, 2.0)
    assert e.value.reason == "cancelled"
    assert host.negotiations[-1].previous_session, "the new session names the old one"
    host.release()  # the host finally gets to the old chain: it must not discard it
    assert host.device.metrics.chains == 0
    assert driver.window.stats.fenced_not_done == 1


async def test_a_chain_done_whose_answer_was_lost_is_booked_done_after_the_fence(
    setup: tuple[FakeHost, BalloonDriver, BuddyAllocator, list[str]],
) -> None:
    host, driver, mm, _ = setup
    host.lose_answers = True
    report = asyncio.create_task(driver.report([isolated_block(mm)]))
    await wait_for(lambda: host.device.metrics.chains == 1, 1.0, "the discard")
    host.lose_answers = False
    host.break_streams()
    await asyncio.wait_for(report, 2.0)  # DONE: guest and host agree it was reported
    assert driver.window.stats.fenced_done == 1
    await driver.view.refresh_stats()
    assert driver.view.host_figures is not None and driver.view.host_figures.chains == 1
    assert driver.view.host_figures.reported_bytes == driver.view.acked_pages_this_host * 4096


async def test_a_restarted_host_has_nothing_to_fence(
    setup: tuple[FakeHost, BalloonDriver, BuddyAllocator, list[str]],
) -> None:
    host, driver, mm, _ = setup
    await driver.report([isolated_block(mm)])
    host.hold = True
    report = asyncio.create_task(driver.report([isolated_block(mm)]))
    await wait_for(lambda: host.chains_received == 2, 1.0, "the chain at the host")
    old_instance = driver.view.host_instance
    host.restart()
    with pytest.raises(ReportError) as e:
        await asyncio.wait_for(report, 2.0)
    assert e.value.reason == "cancelled"
    assert driver.view.host_instance != old_instance
    assert driver.view.acked_pages_this_host == 0
    host.hold = False
    await driver.report([isolated_block(mm)])
    assert driver.view.acked_pages_this_host == 1 << MAX_ORDER


async def test_a_host_with_too_small_chains_is_refused_once_when_the_policy_registers() -> None:
    # The capacity flows one way: the host's answer sets the driver's; the policy's
    # own --capacity is checked against it once, as page_reporting_register's -ENOSPC.
    host = FakeHost(max_chain_ranges=8)
    mm = BuddyAllocator(RAM, model=BARE_MEMORY)
    cfg = config()
    driver = BalloonDriver(cfg, mm, transport=host)
    await driver.start()
    try:
        assert driver.capacity == 8
        with pytest.raises(UsageError) as e:
            make_policy(cfg.hinting, mm, driver)
        msg = str(e.value)
        assert "\n" not in msg and "at most 8 ranges" in msg and "--capacity 8" in msg
    finally:
        await driver.stop()


async def test_a_smaller_capacity_fits_a_host_with_small_chains() -> None:
    host = FakeHost(max_chain_ranges=8)
    mm = BuddyAllocator(RAM, model=BARE_MEMORY)
    cfg = config(capacity=8)
    driver = BalloonDriver(cfg, mm, transport=host)
    await driver.start()
    try:
        assert make_policy(cfg.hinting, mm, driver).capacity == 8
        await driver.report([isolated_block(mm) for _ in range(8)])
    finally:
        await driver.stop()


async def test_a_later_session_must_take_the_running_policys_reports() -> None:
    host = FakeHost(max_chain_ranges=512)
    driver = BalloonDriver(
        config(), BuddyAllocator(RAM, model=BARE_MEMORY), transport=host
    )  # reporting: 32
    await driver.start()
    try:
        host.device.table.max_chain_ranges = 64  # smaller, but the policy's 32 fit
        await driver.conn.connect()
        assert driver.capacity == 64
        host.device.table.max_chain_ranges = 8
        with pytest.raises(NegotiationRefused, match="at most 8 ranges per chain but the running"):
            await driver.conn.connect()
    finally:
        await driver.stop()


async def test_the_device_minimum_order_raises_the_policy_order() -> None:
    host = FakeHost(min_order=10)
    driver = BalloonDriver(config(), BuddyAllocator(RAM, model=BARE_MEMORY), transport=host)
    await driver.start()
    try:
        assert driver.min_order == 10
    finally:
        await driver.stop()


async def test_touches_made_while_a_batch_is_being_written_are_not_lost() -> None:
    host = FakeHost()
    mm = BuddyAllocator(RAM, model=BARE_MEMORY)
    driver = BalloonDriver(config(touch_batch=1), mm, transport=host)
    await driver.start()
    try:
        stream = host.streams[-1]
        gate = asyncio.Event()
        stream.write_gate = gate
        a = mm.alloc(0)
        driver.link.on_alloc(a, 0)  # a full batch: a flush starts and waits on the gate
        await asyncio.sleep(0.01)
        b = mm.alloc(0)
        assert b == a + 1
        driver.link.on_alloc(b, 0)  # adjacent: the old code extended the run being written
        gate.set()
        stream.write_gate = None
        await driver.link.flush_touches()
        await wait_for(lambda: not driver.link.touches.runs, 1.0, "touches flushed")
        session = host.device.table.sessions[driver.conn.session]
        assert session.ram.resident_pages() == 2
    finally:
        await driver.stop()
