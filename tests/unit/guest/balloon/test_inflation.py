"""The guest's balloon against a real host device in one process (the loopback
transport): inflate and deflate to the host's target, deflate-on-oom, stats."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from guest.balloon import BalloonDriver
from guest.balloon.inflation import ARRAY_PFNS_MAX, OOM_NR_PAGES
from guest.memory import GuestMemory
from guest.mm import BuddyAllocator
from guest.mm.constants import ALLOCATED, STATE_MASK
from host.balloon import set_target
from host.device import BalloonDevice
from host.memory.sim import SimBackend
from lab.loopback import LoopbackTransport
from pagehint.config import BARE_MEMORY, GuestConfig, HintingConfig
from tests.waiting import wait_for

RAM = 64 << 20
PAGES = RAM // 4096


def config() -> GuestConfig:
    return GuestConfig(
        ram_bytes=RAM,
        guest_id="g",
        reconnect_min=0.01,
        reconnect_max=0.05,
        connect_timeout=2.0,
        hinting=HintingConfig(policy="none"),
    )


@pytest.fixture
async def guest(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[BalloonDevice, BalloonDriver, BuddyAllocator]]:
    oom = getattr(request, "param", False)
    device = BalloonDevice(SimBackend(), stats_interval=0.05, deflate_on_oom=oom)
    mm = BuddyAllocator(RAM, model=BARE_MEMORY)
    driver = BalloonDriver(config(), mm, transport=LoopbackTransport(device))
    await driver.start()
    try:
        yield device, driver, mm
    finally:
        await driver.stop()


def session(device: BalloonDevice, driver: BalloonDriver):  # type: ignore[no-untyped-def]
    return device.table.sessions[driver.conn.session]


async def test_the_guest_inflates_to_the_target_and_deflates_back(
    guest: tuple[BalloonDevice, BalloonDriver, BuddyAllocator],
) -> None:
    device, driver, mm = guest
    target = PAGES // 2
    set_target(device.table, "g", target * 4096)
    await wait_for(lambda: driver.balloon.actual == target, 5.0, "the balloon to fill")
    s = session(device, driver)
    assert s.balloon is not None and s.balloon.actual_pages == target
    assert s.balloon.inflated == target  # in messages of at most 256 pages
    assert len(s.balloon.pages) == target
    # the balloon's pages are allocated blocks no one else is handed out
    assert all(mm.pg[p] & STATE_MASK == ALLOCATED for p in driver.balloon.pages)
    assert mm.nr_free_pages == PAGES - target
    handed = set()
    while (p := mm.alloc(0)) >= 0:
        handed.add(p)
    assert not handed & set(driver.balloon.pages)
    for p in handed:
        mm.free(p, 0)
    set_target(device.table, "g", 0)
    # Without MUST_TELL_HOST leak_balloon frees its pages before the host hears of
    # them: the guest's count reaches 0 one message before the host's does.
    await wait_for(
        lambda: driver.balloon.actual == 0 and s.balloon.deflated == target,
        5.0,
        "the balloon to empty and the host to hear of it",
    )
    assert mm.nr_free_pages == PAGES and not s.balloon.pages


async def test_stats_come_at_the_hosts_interval_by_linux_names(
    guest: tuple[BalloonDevice, BalloonDriver, BuddyAllocator],
) -> None:
    device, driver, _mm = guest
    await wait_for(lambda: bool(session(device, driver).balloon.stats), 3.0, "stats")  # type: ignore[union-attr]
    stats = session(device, driver).balloon.stats  # type: ignore[union-attr]
    assert stats["total-memory"] == RAM and stats["free-memory"] == RAM
    assert {"available-memory", "major-faults", "minor-faults", "alloc-stalls"} <= set(stats)


@pytest.mark.parametrize("guest", [True], indirect=True)
async def test_deflate_on_oom_gives_a_failed_allocation_the_balloons_pages(
    guest: tuple[BalloonDevice, BalloonDriver, BuddyAllocator],
) -> None:
    device, driver, mm = guest
    memory = GuestMemory(mm)
    memory.on_oom.append(driver.balloon.on_oom)
    inflated = PAGES * 8 // 10
    set_target(device.table, "g", inflated * 4096)
    await wait_for(lambda: driver.balloon.actual == inflated, 5.0, "80% inflated")
    want = PAGES // 2
    got = [memory.alloc(0) for _ in range(want)]
    assert all(p >= 0 for p in got)  # every allocation succeeded
    short = want - (PAGES - inflated)
    assert driver.balloon.oom_deflated_pages >= short
    assert driver.balloon.oom_deflated_pages - short < OOM_NR_PAGES  # 256 at a time
    # the host hears of it after the fact (no MUST_TELL_HOST), and the target stays
    b = session(device, driver).balloon
    assert b is not None
    await wait_for(lambda: b.deflated == driver.balloon.oom_deflated_pages, 3.0, "told")
    assert b.target_pages == inflated


async def test_without_deflate_on_oom_the_allocation_fails_and_is_counted(
    guest: tuple[BalloonDevice, BalloonDriver, BuddyAllocator],
) -> None:
    device, driver, mm = guest
    memory = GuestMemory(mm)
    memory.on_oom.append(driver.balloon.on_oom)
    set_target(device.table, "g", RAM)
    await wait_for(lambda: driver.balloon.actual == PAGES, 5.0, "all inflated")
    assert memory.alloc(0) == -1
    assert driver.balloon.oom_deflated_pages == 0 and driver.balloon.alloc_stalls == 1


async def test_a_short_fill_keeps_what_it_got_and_tries_again(
    guest: tuple[BalloonDevice, BalloonDriver, BuddyAllocator],
) -> None:
    device, driver, mm = guest
    held = [mm.alloc(0) for _ in range(PAGES - ARRAY_PFNS_MAX)]
    set_target(device.table, "g", RAM)
    await wait_for(lambda: driver.balloon.actual == ARRAY_PFNS_MAX, 3.0, "what there was")
    assert driver.balloon.inflate_failures >= 1
    for p in held[:1000]:
        mm.free(p, 0)
    await wait_for(lambda: driver.balloon.actual == ARRAY_PFNS_MAX + 1000, 3.0, "the rest")


async def test_a_new_session_hears_of_every_page_in_the_balloon(
    guest: tuple[BalloonDevice, BalloonDriver, BuddyAllocator],
) -> None:
    device, driver, _mm = guest
    set_target(device.table, "g", 1000 * 4096)
    await wait_for(lambda: driver.balloon.actual == 1000, 3.0, "inflated")
    first = driver.conn.session
    device.table.end(first, "expired")
    await wait_for(lambda: driver.conn.session not in ("", first), 3.0, "a new session")
    b = session(device, driver).balloon
    assert b is not None
    await wait_for(lambda: len(b.pages) == 1000, 3.0, "the balloon told again")
    assert b.target_pages == 1000  # the target is the guest id's, kept


@pytest.mark.parametrize("guest", [True], indirect=True)
async def test_after_deflate_on_oom_the_balloon_waits_for_the_hosts_next_word(
    guest: tuple[BalloonDevice, BalloonDriver, BuddyAllocator],
) -> None:
    # As virtio_balloon_oom_notify: the target stays, and nothing refills the
    # balloon until the host speaks again (it thrashed: deflate, refill, deflate).
    import asyncio

    device, driver, mm = guest
    memory = GuestMemory(mm)
    memory.on_oom.append(driver.balloon.on_oom)
    set_target(device.table, "g", RAM)
    await wait_for(lambda: driver.balloon.actual == PAGES, 5.0, "all inflated")
    assert memory.alloc(0) >= 0
    await asyncio.sleep(0.5)
    assert driver.balloon.actual == PAGES - OOM_NR_PAGES and driver.balloon.oom_deflations == 1
    set_target(device.table, "g", RAM)  # the host's next word
    await wait_for(lambda: driver.balloon.actual == PAGES - 1, 5.0, "refilled")


async def test_a_guest_stopping_mid_fill_gives_every_page_back() -> None:
    # The fill under way when the guest stops: its pages were left allocated and
    # unstamped (the final check counted them lost).
    device = BalloonDevice(SimBackend(), stats_interval=0.05)
    mm = BuddyAllocator(RAM, model=BARE_MEMORY)
    t = LoopbackTransport(device, latency=0.05)  # each message answered late
    driver = BalloonDriver(config(), mm, transport=t)
    await driver.start()
    set_target(device.table, "g", RAM)
    await wait_for(lambda: driver.balloon.actual > 0, 3.0, "the fill under way")
    await driver.stop()
    assert mm.nr_free_pages == PAGES and not driver.balloon.pages


async def test_timeline_rows_carry_the_balloon_once_negotiated(
    guest: tuple[BalloonDevice, BalloonDriver, BuddyAllocator],
) -> None:
    from guest.runtime import GuestRuntime
    from guest.service import DriverReadings

    device, driver, mm = guest
    rt = GuestRuntime(config(), device=driver, mm=mm)
    rt.host = DriverReadings(driver, None)
    set_target(device.table, "g", 1000 * 4096)
    await wait_for(lambda: driver.balloon.actual == 1000, 3.0, "inflated")
    row = rt.sample()
    assert (row["balloon_target_bytes"], row["balloon_bytes"]) == (1000 * 4096, 1000 * 4096)
