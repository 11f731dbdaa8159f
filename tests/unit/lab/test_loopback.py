"""The loopback transport: a guest's driver and policy against a real host device
in one process, through the host's own negotiation and reporting queue."""

from __future__ import annotations

import asyncio

import pytest

from guest.balloon import BalloonDriver
from guest.balloon.transport import NegotiationRefused, TransportError
from guest.mm import MAX_ORDER, BuddyAllocator
from guest.runtime import GuestRuntime
from host.device import BalloonDevice
from host.memory.sim import SimBackend
from lab.loopback import LoopbackTransport
from pagehint.config import BARE_MEMORY, GuestConfig, HintingConfig
from tests.blocks import isolated_block
from tests.waiting import wait_for
from virtqueue import features as F
from virtqueue.codec import ChainMsg, Negotiation

RAM = 64 << 20


def config(**kw: object) -> GuestConfig:
    base: dict[str, object] = {
        "ram_bytes": RAM,
        "guest_id": "g",
        "reconnect_min": 0.01,
        "reconnect_max": 0.05,
        "connect_timeout": 2.0,
        "hinting": HintingConfig(policy="reporting", delay=0.05),
    }
    base.update(kw)
    return GuestConfig(**base)  # type: ignore[arg-type]


async def test_a_report_is_checked_discarded_and_answered_by_the_real_device() -> None:
    device = BalloonDevice(SimBackend())
    mm = BuddyAllocator(RAM, model=BARE_MEMORY)
    driver = BalloonDriver(config(), mm, transport=LoopbackTransport(device))
    await driver.start()
    try:
        await driver.report([isolated_block(mm)])
        assert device.metrics.chains == 1
        session = device.table.sessions[driver.conn.session]
        assert session.totals.reported_pages == 1 << MAX_ORDER
        figures = await driver.conn.transport.stats(driver.conn.session, 1.0)
        assert figures.self_guest is not None and figures.self_guest.guest_id == "g"
    finally:
        await driver.stop()
    assert not device.table.sessions  # the guest's Close reached the host


async def test_a_whole_guest_runs_over_it_and_the_host_counts_what_the_guest_reported() -> None:
    device = BalloonDevice(SimBackend())
    # (RAM above the merged design's zone watermark: free > low + capacity << order)
    cfg = config(workload="memhog", duration=1.5, seed=1, ram_bytes=256 << 20)
    mm = BuddyAllocator(cfg.ram_bytes, model=BARE_MEMORY)
    driver = BalloonDriver(cfg, mm, transport=LoopbackTransport(device))
    await driver.start()
    rt = GuestRuntime(cfg, device=driver, mm=mm)
    try:
        await rt.run()
    finally:
        session = device.table.sessions[driver.conn.session]
        await driver.stop()
    assert rt.policy.stats.reported_pages > 0
    assert session.totals.reported_pages == rt.policy.stats.reported_pages


async def test_a_bad_chain_is_refused_by_the_host_rules() -> None:
    device = BalloonDevice(SimBackend())
    t = LoopbackTransport(device)
    acc = await t.negotiate(Negotiation("g", RAM, 4096, F.mask(F.REPORTING), 0), 1.0)
    stream = t.open_stream(acc.session)
    await stream.write(ChainMsg(1, [3], [1]))  # misaligned
    used = await stream.read()
    assert used is not None and getattr(used, "reason", "") == "misaligned"
    await t.aclose()


async def test_refusals_come_back_as_the_grpc_transport_raises_them() -> None:
    device = BalloonDevice(SimBackend(), max_sessions=1)
    t = LoopbackTransport(device)
    with pytest.raises(NegotiationRefused, match=r"^INVALID_ARGUMENT: .*REPORTING"):
        await t.negotiate(Negotiation("g", RAM, 4096, 0, 0), 1.0)
    await t.negotiate(Negotiation("a", RAM, 4096, F.mask(F.REPORTING), 0), 1.0)
    with pytest.raises(TransportError, match=r"^RESOURCE_EXHAUSTED: "):  # retried, not final
        await t.negotiate(Negotiation("b", RAM, 4096, F.mask(F.REPORTING), 0), 1.0)


async def test_a_session_the_host_ends_breaks_the_stream_and_the_driver_comes_back() -> None:
    device = BalloonDevice(SimBackend())
    mm = BuddyAllocator(RAM, model=BARE_MEMORY)
    driver = BalloonDriver(config(), mm, transport=LoopbackTransport(device))
    await driver.start()
    try:
        first = driver.conn.session
        device.table.end(first, "expired")
        await wait_for(lambda: driver.conn.session not in ("", first), 3.0, "a new session")
        await driver.report([isolated_block(mm)])
        assert device.metrics.chains == 1
    finally:
        await driver.stop()


async def test_a_stream_to_an_unknown_session_ends_at_its_first_read_as_grpc_would() -> None:
    device = BalloonDevice(SimBackend())
    t = LoopbackTransport(device)
    stream = t.open_stream("f" * 32)
    with pytest.raises(TransportError, match=r"^UNAUTHENTICATED: "):
        await stream.read()
    assert device.metrics.refusals["unknown_session"] == 1
    with pytest.raises(TransportError, match=r"^UNAUTHENTICATED: "):
        await t.close_session("f" * 32, 1.0)
    await t.aclose()


async def test_a_host_error_ends_the_stream_internal_and_is_noted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    device = BalloonDevice(SimBackend())
    t = LoopbackTransport(device)
    acc = await t.negotiate(Negotiation("g", RAM, 4096, F.mask(F.REPORTING), 0), 1.0)

    def broken(*_a: object) -> None:
        raise RuntimeError("a bug in the host")

    monkeypatch.setattr(t.queue, "_one_message", broken)
    stream = t.open_stream(acc.session)
    await stream.write(ChainMsg(1, [0], [9]))
    with pytest.raises(TransportError, match=r"^INTERNAL: "):
        await stream.read()
    await t.aclose()


async def test_an_ended_stream_stays_ended_and_the_hosts_lines_are_the_hosts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from pagehint.logging import log_as, setup

    setup()
    log_as("guest[g]", guest="g")
    device = BalloonDevice(SimBackend())
    t = LoopbackTransport(device)
    acc = await t.negotiate(Negotiation("g", RAM, 4096, F.mask(F.REPORTING), 0), 1.0)
    stream = t.open_stream(acc.session)
    await asyncio.sleep(0)
    device.table.end(acc.session, "expired")
    for _ in range(2):  # a second read does not hang: it raises again
        with pytest.raises(TransportError, match=r"^UNAUTHENTICATED: "):
            await asyncio.wait_for(stream.read(), 2.0)
    (negotiated,) = [r for r in caplog.records if "negotiated" in r.getMessage()]
    assert negotiated.source == "host"  # type: ignore[attr-defined]
    await t.aclose()


async def test_touches_carried_in_a_chain_reach_the_real_host_before_it() -> None:
    # Through the host's own negotiation and queue: the guest offers touches in
    # chains, the host grants them, and the touches queued before a report ride in
    # its chain — applied before its ranges, so the host holds exactly the touched
    # pages the chain did not cover, and nothing is refused.
    device = BalloonDevice(SimBackend())
    mm = BuddyAllocator(RAM, model=BARE_MEMORY)
    driver = BalloonDriver(
        config(touch_flush_seconds=3600), mm, transport=LoopbackTransport(device)
    )
    await driver.start()
    try:
        assert driver.conn.accepted is not None and driver.conn.accepted.touches_in_chain
        assert driver.link.carry
        touched = [mm.alloc(0) for _ in range(8)]
        for pfn in touched:
            driver.link.on_alloc(pfn, 0)
        writes: list[object] = []
        stream = driver.conn.stream
        assert stream is not None
        write = stream.write

        async def recording(msg: object) -> None:
            writes.append(msg)
            await write(msg)  # type: ignore[arg-type]

        stream.write = recording  # type: ignore[method-assign]
        await driver.report([isolated_block(mm)])
        assert len(writes) == 1 and isinstance(writes[0], ChainMsg)
        assert writes[0].touched is not None
        session = device.table.sessions[driver.conn.session]
        assert session.totals.touched_pages == 8
        assert session.ram.resident_pages() == 8
        assert not device.metrics.refusals
    finally:
        await driver.stop()
