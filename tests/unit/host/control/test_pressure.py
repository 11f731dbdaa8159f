"""The pressure rule: senpai.py's tick with its defaults (interval 6 ticks of 1 s,
target 10 ms stall per interval, probe at most 1%, back off at most 100%,
coefficients 10 and 20, at least 100 MiB)."""

from __future__ import annotations

import pytest

from host.control.base import GuestView, HostView
from host.control.pressure import (
    INTERVAL,
    MIN_SIZE,
    SenpaiPressure,
    SenpaiState,
    backoff_factor,
    probe_factor,
    tick,
)

GiB = 1 << 30


def test_probe_is_1_percent_when_nothing_stalls_and_less_near_the_target() -> None:
    assert probe_factor(0) == pytest.approx(0.01)
    assert probe_factor(1000) == pytest.approx(0.01)  # err 10: (10/10)^2 * 0.01
    assert probe_factor(5000) == pytest.approx(0.0004)  # err 2: (2/10)^2 * 0.01


def test_backoff_grows_with_the_square_of_the_overshoot_up_to_doubling() -> None:
    assert backoff_factor(20_000) == pytest.approx(0.01)  # err 2: (2/20)^2
    assert backoff_factor(200_000) == pytest.approx(1.0)  # err 20: the limit
    assert backoff_factor(2_000_000) == pytest.approx(1.0)


def test_tick_waits_an_interval_then_probes_and_backs_off_at_once() -> None:
    st = SenpaiState(limit=GiB, last_total=0.0)
    for _ in range(INTERVAL):  # grace_ticks starts at interval
        assert tick(st, 0.0, GiB, GiB, MIN_SIZE, 2 * GiB) is None
    probed = tick(st, 0.0, GiB, GiB, MIN_SIZE, 2 * GiB)
    assert probed == int(GiB * 0.99) & ~4095
    # 0.1 s of stall in one tick (100,000 us > 10,000): back off at once, by
    # (10/20)^2 = 25%.
    backed = tick(st, 0.1, probed, probed, MIN_SIZE, 2 * GiB)
    assert backed == int(probed * 1.25) & ~4095
    assert st.grace_ticks == INTERVAL - 1


def test_the_limit_stays_between_min_and_max() -> None:
    st = SenpaiState(limit=MIN_SIZE, last_total=0.0, grace_ticks=0)
    assert tick(st, 0.0, MIN_SIZE, MIN_SIZE, MIN_SIZE, GiB) == MIN_SIZE
    st = SenpaiState(limit=GiB, last_total=0.0)
    assert tick(st, 10.0, GiB, GiB, MIN_SIZE, GiB) == GiB


def _view(
    target_memory: int, stall: float, min_bytes: int = 0, actual: int | None = None
) -> HostView:
    memory = target_memory if actual is None else actual
    g = GuestView(
        "g",
        ram_bytes=GiB,
        min_bytes=min_bytes,
        target_bytes=GiB - target_memory,
        actual_bytes=GiB - memory,
        stall_seconds=stall,
    )
    return HostView(0.0, 4 * GiB, GiB, 0, 0, 0, 0, 0, (g,))


def _settle(c: SenpaiPressure, mem: int, min_bytes: int = 0) -> None:
    """The first call writes memory.current; then the interval's grace ticks."""
    c.decide(_view(mem, 0.0, min_bytes))
    for _ in range(INTERVAL):
        assert c.decide(_view(mem, 0.0, min_bytes)) == {}


def test_the_controller_squeezes_a_quiet_guest_and_lets_go_when_it_stalls() -> None:
    c = SenpaiPressure()
    mem = GiB
    _settle(c, mem)
    out = c.decide(_view(mem, 0.0))
    mem = out["g"]
    assert mem == int(GiB * 0.99) & ~4095
    out = c.decide(_view(mem, 0.5))  # stalled 0.5 s: back off all the way (x2, capped)
    assert out == {"g": GiB}


def test_the_floor_is_the_larger_of_100_mib_and_balloon_min() -> None:
    c = SenpaiPressure()
    floor = 900 << 20
    _settle(c, 905 << 20, floor)
    assert c.decide(_view(905 << 20, 0.0, floor)) == {"g": floor}


def test_at_start_it_writes_current_memory_clamped_to_its_floor() -> None:
    # Someone set 50 MiB, under senpai's 100 MiB: its init writes 100 MiB at once.
    c = SenpaiPressure()
    assert c.decide(_view(50 << 20, 0.0)) == {"g": MIN_SIZE}


def test_a_balloon_still_moving_does_not_blind_it() -> None:
    # Target 512 MiB, the guest still at 600 MiB: senpai goes on ticking from its
    # own limit, and backs off when the guest stalls.
    c = SenpaiPressure()
    out = c.decide(_view(512 << 20, 0.0, actual=600 << 20))
    assert out == {"g": 600 << 20}  # init: memory.current
    got = c.decide(_view(600 << 20, 0.5, actual=580 << 20))
    assert got == {"g": min(GiB, 2 * (600 << 20)) & ~4095}


def test_someone_else_setting_the_target_restarts_from_current_memory() -> None:
    c = SenpaiPressure()
    _settle(c, GiB)
    c.decide(_view(GiB, 0.0))  # probed to 99%
    # `pagehint balloon` set 512 MiB (the guest is there): senpai keeps its tick
    # count, and its next adjustment starts from memory.current, not its own limit.
    for _ in range(INTERVAL - 1):
        assert c.decide(_view(512 << 20, 0.0)) == {}
    assert c.decide(_view(512 << 20, 0.0)) == {}  # current written: no change to send
    assert c.guests["g"].limit == 512 << 20
    assert c.decide(_view(512 << 20, 0.5)) == {"g": GiB}  # then it scales from there
