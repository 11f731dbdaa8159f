"""The controller runner: what a controller is shown, what of its answer is
applied, and the guard that switches a broken one off without the host noticing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

import pytest

from host.control import runner as runner_mod
from host.control.base import Controller, HostView
from host.control.runner import ControllerRunner, controller_class, host_view, make_controller
from host.device import BalloonDevice
from host.memory.hostmem import HostMemory
from host.memory.sim import SimBackend
from pagehint.errors import UsageError
from virtqueue import features as F
from virtqueue.codec import Negotiation

MiB = 1 << 20
RAM = 64 * MiB


def _device(guests: int = 2) -> BalloonDevice:
    model = HostMemory((128 * MiB) // 4096, (64 * MiB) // 4096)
    d = BalloonDevice(SimBackend(model=model))
    for i in range(guests):
        feats = F.mask(F.REPORTING, F.STATS_VQ)
        d.table.negotiate(Negotiation(f"g{i}", RAM, 4096, feats, 0, balloon=True))
    return d


class Fixed(Controller):
    period = 0.01

    def __init__(self, answer: object = None) -> None:
        self.answer = answer
        self.seen: list[HostView] = []

    def decide(self, host: HostView) -> Mapping[str, int]:
        self.seen.append(host)
        return self.answer  # type: ignore[return-value]


async def test_more_than_its_ram_is_taken_as_its_ram() -> None:
    d = _device()
    r = ControllerRunner(d, Fixed({"g0": 48 * MiB}), 0, "test")
    await r.step()
    r.controller = Fixed({"g0": 10 * RAM})
    await r.step()
    s = d.table.sessions[d.table.by_guest["g0"]]
    assert s.balloon is not None and s.balloon.target_pages == 0 and not r.record.refused


def test_the_view_shows_the_hosts_memory_and_each_guests_balloon() -> None:
    d = _device()
    s = next(iter(d.table.sessions.values()))
    s.ram.touched([(0, 1024)])
    v = host_view(d, 1.0, 16 * MiB)
    assert v is not None
    assert v.memory_bytes == 128 * MiB and v.swap_bytes == 64 * MiB
    assert [g.guest_id for g in v.guests] == ["g0", "g1"]
    assert v.guests[0].resident_bytes == 4 * MiB
    assert v.guests[0].min_bytes == 16 * MiB and v.guests[0].memory_bytes == RAM
    assert host_view(BalloonDevice(SimBackend()), 0.0, 0) is None  # no model: no view


async def test_an_answer_sets_targets_as_the_guests_memory() -> None:
    d = _device()
    r = ControllerRunner(d, Fixed({"g0": 48 * MiB}), 0, "test")
    await r.step()
    s = d.table.sessions[d.table.by_guest["g0"]]
    assert s.balloon is not None and s.balloon.target_pages * 4096 == 16 * MiB
    assert r.record.targets_set == 1 and r.record.decisions == 1


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ({"nobody": MiB}, "unknown_guest"),
        ({"g0": -1}, "out_of_range"),
        ({"g0": 0}, "out_of_range"),
        ({"g0": 1.5}, "not_whole_bytes"),
        ({"g0": True}, "not_whole_bytes"),
        ({7: MiB}, "unknown_guest"),
    ],
)
async def test_a_bad_entry_is_refused_and_the_rest_applied(
    answer: dict[object, object], why: str
) -> None:
    d = _device()
    r = ControllerRunner(d, Fixed({**answer, "g1": 32 * MiB}), 0, "test")
    await r.step()
    assert r.record.refused == {why: 1}
    s1 = d.table.sessions[d.table.by_guest["g1"]]
    assert s1.balloon is not None and s1.balloon.target_pages * 4096 == 32 * MiB
    assert not r.record.broken


async def _beats_while(work: Coroutine[Any, Any, None]) -> int:
    """How many 10 ms heartbeats the loop ran while ``work`` ran (bounded: 5 s)."""
    ticks = 0

    async def beat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    b = asyncio.create_task(beat())
    try:
        await asyncio.wait_for(work, 5)
    finally:
        b.cancel()
    return ticks


class Raises(Fixed):
    def decide(self, host: HostView) -> Mapping[str, int]:
        raise ValueError("boom\nsecond line")


class Hangs(Fixed):
    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def decide(self, host: HostView) -> Mapping[str, int]:
        self.release.wait(30)
        return {}


@pytest.mark.parametrize(
    ("controller", "said"),
    [
        (Raises(), "raised ValueError: boom"),
        (Fixed([1, 2]), "answered a list, not a mapping"),
    ],
)
async def test_a_broken_controller_is_switched_off_and_targets_stay(
    controller: Controller, said: str
) -> None:
    d = _device()
    r = ControllerRunner(d, controller, 0, "test")
    await asyncio.wait_for(r.run(), 5)  # run() returns once it is off
    assert said in r.record.broken
    assert all(
        s.balloon is not None and s.balloon.target_pages == 0 for s in d.table.sessions.values()
    )


async def test_a_controller_that_never_answers_is_switched_off_and_the_loop_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner_mod, "MIN_DECIDE_TIMEOUT", 0.2)
    c = Hangs()
    r = ControllerRunner(_device(), c, 0, "test")
    ticks = await _beats_while(r.run())
    c.release.set()
    assert "did not answer within 0.2 s" in r.record.broken
    assert ticks >= 10  # the loop ran while decide() hung


def test_builtin_names_and_plugins_load_and_bad_ones_are_one_line(tmp_path: Path) -> None:
    assert controller_class("mom").name == "mom"
    assert make_controller("pressure")[1] == 1.0
    for bad, said in [
        ("nope", "unknown value 'nope'"),
        ("x.py:C", "no file x.py"),
        ("host.control.base:Controller", "is abstract"),
        ("host.control.base:HostView", "is not a host.control.base.Controller"),
    ]:
        with pytest.raises(UsageError, match=said):
            controller_class(bad)
    f = tmp_path / "mine.py"
    f.write_text(
        "from host.control.base import Controller\n"
        "class Mine(Controller):\n    period = 0\n    def decide(self, host):\n        return {}\n"
        "class Breaks(Controller):\n    def __init__(self):\n        raise OSError('no')\n"
        "    def decide(self, host):\n        return {}\n"
        "class Exits(Controller):\n    def __init__(self):\n        raise SystemExit(0)\n"
        "    def decide(self, host):\n        return {}\n"
        "class Async(Controller):\n    async def decide(self, host):\n        return {}\n"
        "class BadPeriod(Controller):\n    @property\n    def period(self):\n"
        "        raise ValueError('nope')\n    def decide(self, host):\n        return {}\n"
    )
    with pytest.raises(UsageError, match="building it failed: SystemExit"):
        make_controller(f"{f}:Exits")
    with pytest.raises(UsageError, match="not async"):
        make_controller(f"{f}:Async")
    with pytest.raises(UsageError, match="building it failed: ValueError: nope"):
        make_controller(f"{f}:BadPeriod")
    with pytest.raises(UsageError, match=r"period must be 0\.1 to 3600 s"):
        make_controller(f"{f}:Mine")
    with pytest.raises(UsageError, match="building it failed: OSError: no"):
        make_controller(f"{f}:Breaks")


class SlowMapping(dict[str, int]):
    """A controller's own mapping whose iteration blocks: checked in the thread."""

    def items(self):  # type: ignore[no-untyped-def, override]
        threading.Event().wait(30)
        return super().items()


async def test_a_slow_answer_is_checked_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_mod, "MIN_DECIDE_TIMEOUT", 0.2)
    r = ControllerRunner(_device(), Fixed(SlowMapping(g0=MiB)), 0, "test")
    ticks = await _beats_while(r.run())
    assert "did not answer" in r.record.broken and ticks >= 10


async def test_the_controllers_work_is_in_the_hosts_metrics() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from host.metrics import host_metrics
    from pagehint.metrics import FnCollector

    d = _device()
    r = ControllerRunner(d, Fixed({"g0": 48 * MiB, "ghost": MiB}), 0, "test")
    await r.step()
    registry = CollectorRegistry()
    registry.register(FnCollector(lambda: host_metrics(d, None, r)))
    text = generate_latest(registry).decode()
    assert "pagehint_controller_decisions_total 1.0" in text
    assert "pagehint_controller_targets_set_total 1.0" in text
    assert 'pagehint_controller_refused_entries_total{reason="unknown_guest"} 1.0' in text
    assert "pagehint_controller_running 1.0" in text
