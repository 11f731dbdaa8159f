"""Touches queued before a chain: carried in the chain where the host takes them
(Chain.touched), written on their own before it where it does not."""

from __future__ import annotations

import asyncio

import pytest

from guest.balloon import BalloonDriver
from guest.hinting.device import ReportError
from guest.mm import BuddyAllocator
from pagehint.config import BARE_MEMORY
from tests.blocks import isolated_block
from tests.unit.guest.balloon.fakehost import FakeHost, FakeStream
from tests.unit.guest.balloon.test_driver import config
from tests.waiting import wait_for
from virtqueue.codec import ChainMsg, GuestMsg, StatsMsg, TouchedMsg, encode_guest_msg
from virtqueue.contract import MAX_GUEST_MESSAGE_BYTES, MAX_TOUCH_RUNS

RAM = 64 << 20


def record_writes(stream: FakeStream) -> list[GuestMsg]:
    seen: list[GuestMsg] = []
    write = stream.write

    async def recording(msg: GuestMsg) -> None:
        # The balloon's statistics go on their own clock (a loaded machine put one
        # between the touches and the chain): not what these tests are about.
        if not isinstance(msg, StatsMsg):
            seen.append(msg)
        await write(msg)

    stream.write = recording  # type: ignore[method-assign]
    return seen


async def touch_then_report(
    host: FakeHost, pages: int, batch: int
) -> tuple[list[GuestMsg], int, int, list[int]]:
    """Touch ``pages`` single pages, none adjacent (a run each), then report one
    top-order block: the writes, the host's resident pages, the touched pages it
    was told of, and the pages touched, in order."""
    mm = BuddyAllocator(RAM, model=BARE_MEMORY)
    # No periodic flush in the test's time: the touches wait for the chain.
    driver = BalloonDriver(config(touch_batch=batch, touch_flush_seconds=3600), mm, transport=host)
    await driver.start()
    try:
        writes = record_writes(host.streams[-1])
        order: list[int] = []
        for _ in range(pages):
            mm.alloc(0)  # a gap between two touched pages
            pfn = mm.alloc(0)
            driver.link.on_alloc(pfn, 0)
            order.append(pfn)
        await driver.report([isolated_block(mm)])
        s = host.device.table.sessions[driver.conn.session]
        return writes, s.ram.resident_pages(), s.totals.touched_pages, order
    finally:
        await driver.stop()


async def test_the_touches_before_a_chain_ride_in_it() -> None:
    host = FakeHost()
    writes, resident, touched, _ = await touch_then_report(host, pages=5, batch=1024)
    assert len(writes) == 1 and isinstance(writes[0], ChainMsg)
    carried = writes[0].touched
    assert carried is not None and sum(carried.counts) == 5
    assert host.carried == 1
    assert (resident, touched) == (5, 5)


async def test_an_older_host_gets_them_in_a_message_of_their_own() -> None:
    host = FakeHost()
    host.touches_in_chain = False  # a host that does not know Chain.touched
    writes, resident, touched, _ = await touch_then_report(host, pages=5, batch=1024)
    assert [type(w) for w in writes] == [TouchedMsg, ChainMsg]
    chain = writes[1]
    assert isinstance(chain, ChainMsg) and chain.touched is None
    assert host.carried == 0
    assert (resident, touched) == (5, 5)


@pytest.mark.parametrize("pages", [0, 1, 3])
async def test_only_the_last_batch_rides_in_the_chain(pages: int) -> None:
    # Batches of one run: the earlier ones are written first, in order.
    host = FakeHost()
    writes, resident, touched, order = await touch_then_report(host, pages=pages, batch=1)
    assert [type(w) for w in writes] == [TouchedMsg] * max(pages - 1, 0) + [ChainMsg]
    chain = writes[-1]
    assert isinstance(chain, ChainMsg)
    assert (chain.touched is not None) == (pages > 0)
    told = [w.pfns[0] for w in writes[:-1] if isinstance(w, TouchedMsg)]
    told += list(chain.touched.pfns) if chain.touched is not None else []
    assert told == order
    assert pages == resident == touched


@pytest.mark.parametrize("carry", [True, False])
async def test_a_chain_that_waited_through_a_reconnect_takes_no_touches_of_the_new_session(
    carry: bool,
) -> None:
    # A report captured its stream, then waited for the write lock; the stream
    # broke and a new session began meanwhile, which queued every allocated block
    # for the new host. Those touches must go to the new stream, not be taken and
    # lost with a write to the dead one (the new host would never hear of them).
    host = FakeHost()
    host.touches_in_chain = carry
    mm = BuddyAllocator(RAM, model=BARE_MEMORY)
    driver = BalloonDriver(config(touch_flush_seconds=3600), mm, transport=host)
    await driver.start()
    try:
        for _ in range(5):
            mm.alloc(0)
            driver.link.on_alloc(mm.alloc(0), 0)
        await driver.link.flush_touches()
        allocated = 10
        b = isolated_block(mm)
        await driver.link.write_lock.acquire()  # another writer holds it
        report = asyncio.create_task(driver.report([b]))
        await wait_for(lambda: bool(driver.window.chains), 2.0, "the report waiting for the lock")
        host.break_streams()
        await wait_for(
            lambda: driver.conn.connects >= 2 and driver.conn.connected.is_set(),
            5.0,
            "the reconnect",
        )
        new = host.device.table.sessions[driver.conn.session]
        assert driver.link.touches.runs  # the new session's: every allocated block
        driver.link.write_lock.release()
        with pytest.raises(ReportError, match=r"counts as not reported"):
            await asyncio.wait_for(report, 5.0)
        await driver.link.flush_touches()
        assert new.ram.resident_pages() == allocated
    finally:
        await driver.stop()


def test_a_batch_fits_one_message_and_the_limit_is_the_configs() -> None:
    assert MAX_TOUCH_RUNS * 12 + 1024 <= MAX_GUEST_MESSAGE_BYTES
    with pytest.raises(Exception, match="touch batch"):
        config(touch_batch=MAX_TOUCH_RUNS + 1)


async def test_a_batch_too_big_to_ride_with_its_chain_goes_on_its_own() -> None:
    # A batch one run short of MAX_TOUCH_RUNS fits a message with a chain of one
    # range, not with one of 32: then the batch is written first, alone, and
    # neither message passes the host's 64 KiB limit.
    ram = 256 << 20
    for ranges, expected in ((1, [ChainMsg]), (32, [TouchedMsg, ChainMsg])):
        host = FakeHost()
        mm = BuddyAllocator(ram, model=BARE_MEMORY)
        driver = BalloonDriver(
            config(ram_bytes=ram, touch_batch=MAX_TOUCH_RUNS, touch_flush_seconds=3600),
            mm,
            transport=host,
        )
        await driver.start()
        try:
            writes = record_writes(host.streams[-1])
            for _ in range(MAX_TOUCH_RUNS - 1):  # one run short of a full batch
                mm.alloc(0)
                driver.link.on_alloc(mm.alloc(0), 0)
            await driver.report([isolated_block(mm) for _ in range(ranges)])
            assert [type(w) for w in writes] == expected
            for w in writes:
                assert len(encode_guest_msg(w).SerializeToString()) <= MAX_GUEST_MESSAGE_BYTES
            session = host.device.table.sessions[driver.conn.session]
            assert session.totals.touched_pages == MAX_TOUCH_RUNS - 1
        finally:
            await driver.stop()
