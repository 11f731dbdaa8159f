"""Touches queued before a chain: carried in the chain where the host takes them
(Chain.touched), written on their own before it where it does not."""

from __future__ import annotations

import pytest

from guest.balloon import BalloonDriver
from guest.mm import BuddyAllocator
from pagehint.config import BARE_MEMORY
from tests.unit.guest.balloon.fakehost import FakeHost, FakeStream
from tests.unit.guest.balloon.test_driver import block, config
from virtqueue.codec import ChainMsg, GuestMsg, TouchedMsg

RAM = 64 << 20


def record_writes(stream: FakeStream) -> list[GuestMsg]:
    seen: list[GuestMsg] = []
    write = stream.write

    async def recording(msg: GuestMsg) -> None:
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
        await driver.report([block(mm)])
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
