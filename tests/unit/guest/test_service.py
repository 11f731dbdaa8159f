"""The guest service: a whole guest in process — loopback, an unreachable host,
and stop requests that come before boot, while connecting, or while running."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from guest.service import StopSignals, serve_guest
from pagehint.config import GuestConfig, HintingConfig, MemoryConfig
from pagehint.errors import UsageError
from tests.waiting import wait_for


def _cfg(**kw: object) -> GuestConfig:
    base: dict[str, object] = {
        "ram_bytes": 128 << 20,
        "duration": 0.3,
        "workload": "memhog",
        "hinting": HintingConfig(policy="reporting", delay=0.0),
        # No boot layout: a 128 MiB Linux guest's zone never passes reporting's gate.
        "memory": MemoryConfig(layout="none"),
    }
    base.update(kw)
    return GuestConfig(**base)  # type: ignore[arg-type]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_without_a_host_reports_go_to_the_loopback_device(tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        '[[steps]]\nop = "alloc"\nsize = "32MiB"\nname = "a"\n[[steps]]\nop = "free"\nname = "a"\n'
    )
    cfg = _cfg(workload=None, scenario=str(scenario), duration=0.5)
    s = await serve_guest(cfg, signals=StopSignals())
    assert s["backend"] == "loopback" and s["reported_bytes"] > 0
    assert s["data_loss_checked"] is False and "host_chains" not in s


async def test_an_unreachable_host_is_one_line_after_the_connect_timeout() -> None:
    cfg = _cfg(host=f"127.0.0.1:{_closed_port()}", connect_timeout=0.5)
    with pytest.raises(UsageError) as e:
        await asyncio.wait_for(serve_guest(cfg, signals=StopSignals()), 20)
    assert "\n" not in str(e.value) and "127.0.0.1" in str(e.value)


async def test_a_stop_before_boot_starts_nothing() -> None:
    signals = StopSignals()
    signals.stop()
    with pytest.raises(UsageError, match="before it started"):
        await serve_guest(_cfg(start_delay=5.0), signals=signals)


async def test_a_stop_while_connecting_gives_up_the_connection() -> None:
    signals = StopSignals()
    cfg = _cfg(host=f"127.0.0.1:{_closed_port()}", connect_timeout=30.0)
    run = asyncio.create_task(serve_guest(cfg, signals=signals))

    def connecting() -> bool:  # the driver's start is running under unless_stopped
        return any(
            getattr(t.get_coro(), "__qualname__", "") == "BalloonDriver.start"
            for t in asyncio.all_tasks()
        )

    await wait_for(connecting, 10, "the guest to start connecting")
    signals.stop()
    with pytest.raises(UsageError, match="while connecting"):
        await asyncio.wait_for(run, 10)


async def test_a_stop_while_running_ends_the_run_with_its_summary() -> None:
    signals = StopSignals()
    run = asyncio.create_task(serve_guest(_cfg(duration=60), signals=signals))
    await wait_for(lambda: bool(signals.running), 10, "the guest to run")
    signals.stop()
    s = await asyncio.wait_for(run, 10)
    assert s["stopped_by_signal"] and s["duration_s"] < 30


async def test_a_stop_is_logged_as_each_guests_own_line(caplog: pytest.LogCaptureFixture) -> None:
    # The signal's handler runs in the context it was installed from: each guest's
    # "stopping" line must still carry its own source.
    from pagehint.logging import setup

    setup()
    signals = StopSignals()
    runs = [
        asyncio.create_task(serve_guest(_cfg(duration=60, guest_id=g), signals=signals))
        for g in ("ga", "gb")
    ]
    await wait_for(lambda: len(signals.running) == 2, 10, "both guests to run")
    signals.stop()
    await asyncio.wait_for(asyncio.gather(*runs), 10)
    sources = sorted(
        r.source  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "stopping on signal"
    )
    assert sources == ["guest[ga]", "guest[gb]"]


async def test_a_booted_guest_is_out_of_the_collectors_full_walks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pagehint/heap.py: boot's allocator and tables go to the permanent generation
    # once built, so a full collection does not walk them again (128 guests in one
    # process: 3.6 s of full collections in 30 s before, up to 149 ms each).
    import gc

    from pagehint import heap

    frozen: list[int] = []
    real = heap.settle
    monkeypatch.setattr(heap, "settle", lambda: (real(), frozen.append(gc.get_freeze_count())))
    with heap.settling():  # as `pagehint guest` and `guest-group` run their guests
        await serve_guest(_cfg(duration=0.1), signals=StopSignals())
    assert len(frozen) == 1 and frozen[0] > 0
    assert gc.get_freeze_count() == 0  # collectable again once the run is over
    await serve_guest(_cfg(duration=0.1), signals=StopSignals())
    assert len(frozen) == 2 and frozen[1] == 0  # a library caller freezes nothing
