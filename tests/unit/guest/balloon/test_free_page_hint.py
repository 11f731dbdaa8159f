"""The guest's free page hinting against a real host device in one process (the
loopback transport): a run hints every free top-order block and holds it until
DONE, the shrinker gives blocks back first, a new session gets them back, and
reporting goes on beside it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from guest.balloon import BalloonDriver
from guest.balloon.free_page_hint import HINT_BLOCK_ORDER
from guest.memory import GuestMemory
from guest.mm import BuddyAllocator
from host import hints
from host.device import BalloonDevice
from host.memory.sim import SimBackend
from host.sessions import Session
from lab.loopback import LoopbackTransport
from pagehint.config import BARE_MEMORY, GuestConfig, HintingConfig
from tests.waiting import wait_for

RAM = 64 << 20
PAGES = RAM // 4096
BLOCK = 1 << HINT_BLOCK_ORDER


def config(policy: str) -> GuestConfig:
    return GuestConfig(
        ram_bytes=RAM,
        guest_id="g",
        reconnect_min=0.01,
        reconnect_max=0.05,
        connect_timeout=2.0,
        hinting=HintingConfig(policy=policy),
    )


@pytest.fixture
async def guest(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[BalloonDevice, BalloonDriver, BuddyAllocator]]:
    policy, oom = getattr(request, "param", ("none", False))
    device = BalloonDevice(SimBackend(), free_page_hint=True, deflate_on_oom=oom)
    mm = BuddyAllocator(RAM, model=BARE_MEMORY)
    driver = BalloonDriver(config(policy), mm, transport=LoopbackTransport(device))
    await driver.start()
    try:
        yield device, driver, mm
    finally:
        await driver.stop()


def session(device: BalloonDevice) -> Session:
    return device.table.sessions[device.table.by_guest["g"]]


async def test_a_run_hints_every_free_block_and_holds_them_until_done(
    guest: tuple[BalloonDevice, BalloonDriver, BuddyAllocator],
) -> None:
    device, driver, mm = guest
    held = [mm.alloc(0) for _ in range(100)]  # breaks one top-order block
    s = session(device)
    hints.start(s, acknowledge_on_stop=False)
    await wait_for(
        lambda: hints.state(s).guest_cmd == 0 and hints.state(s).has_guest_cmd, 5.0, "STOP"
    )
    blocks = PAGES // BLOCK - 1
    assert hints.state(s).hinted_pages == blocks * BLOCK
    assert len(driver.hints.blocks) == blocks
    assert mm.nr_free_pages == BLOCK - 100  # the hinted blocks are not free now
    assert mm.alloc(HINT_BLOCK_ORDER) == -1
    hints.stop(s)  # DONE
    await wait_for(lambda: not driver.hints.blocks, 5.0, "the blocks back")
    assert mm.nr_free_pages == PAGES - 100
    for p in held:
        mm.free(p, 0)


async def test_stop_answers_the_guests_stop_with_done_by_default(
    guest: tuple[BalloonDevice, BalloonDriver, BuddyAllocator],
) -> None:
    device, driver, mm = guest
    s = session(device)
    hints.start(s, acknowledge_on_stop=True)
    await wait_for(lambda: hints.state(s).host_cmd == 1, 5.0, "DONE")
    await wait_for(lambda: not driver.hints.blocks, 5.0, "the blocks back")
    assert mm.nr_free_pages == PAGES and driver.hints.runs == 1


@pytest.mark.parametrize("guest", [("none", True)], indirect=True)
async def test_under_pressure_hinted_blocks_go_back_first(
    guest: tuple[BalloonDevice, BalloonDriver, BuddyAllocator],
) -> None:
    device, driver, mm = guest
    memory = GuestMemory(mm)
    memory.on_oom.append(driver.on_oom)
    s = session(device)
    hints.start(s, acknowledge_on_stop=False)
    await wait_for(
        lambda: hints.state(s).has_guest_cmd and hints.state(s).guest_cmd == 0, 5.0, "STOP"
    )
    assert mm.nr_free_pages == 0
    assert memory.alloc(0) >= 0  # the shrinker gave a hinted block back
    assert driver.hints.shrunk_blocks == 1 and driver.balloon.alloc_stalls == 1
    assert len(driver.hints.blocks) == PAGES // BLOCK - 1


async def test_a_new_session_gets_every_held_block_back(
    guest: tuple[BalloonDevice, BalloonDriver, BuddyAllocator],
) -> None:
    device, driver, mm = guest
    s = session(device)
    hints.start(s, acknowledge_on_stop=False)
    await wait_for(lambda: bool(driver.hints.blocks) and hints.state(s).has_guest_cmd, 5.0, "a run")
    await wait_for(lambda: hints.state(s).guest_cmd == 0, 5.0, "STOP")
    device.table.end(s.token, "test: the host forgot")
    await wait_for(
        lambda: device.table.by_guest.get("g") not in (None, s.token), 5.0, "a new session"
    )
    await wait_for(lambda: not driver.hints.blocks, 5.0, "the blocks back")
    assert mm.nr_free_pages == PAGES
