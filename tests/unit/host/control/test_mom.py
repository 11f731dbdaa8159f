"""oVirt MOM's balloon rules (doc/balloon.rules, e0f3d3b7) with its constants:
pressure under 20% host free, critical at 5%, guests keep 20% free unconstrained,
steps of at most 5%, nothing under a 0.25% change; the policy every 10 s over
5 s samples averaged over the last 10 (doc/mom-balloon.conf)."""

from __future__ import annotations

import pytest

from host.control.base import GuestView, HostView
from host.control.mom import (
    MomBalloon,
    change_big_enough,
    grow_guest,
    guest_free_percent,
    shrink_guest,
)

MiB = 1 << 20


def test_guest_free_percent_scales_with_host_pressure_and_goes_negative_when_critical() -> None:
    assert guest_free_percent(0.10) == pytest.approx(0.10)  # 0.20 * 0.10 / 0.20
    assert guest_free_percent(0.15) == pytest.approx(0.15)
    assert guest_free_percent(0.05) == pytest.approx(0.0)  # critical: -0.05 + 0.05
    assert guest_free_percent(0.02) == pytest.approx(-0.03)


def test_shrink_steps_5_percent_while_the_floor_allows() -> None:
    # 1000 MiB guest, 300 MiB used, host 10% free: floor 300 + 0.10 * 1000 = 400.
    assert shrink_guest(0.10, 1000, 0, 1000, 700) == pytest.approx(950)


def test_shrink_stops_at_the_floor_of_used_plus_guest_free() -> None:
    # 1000 MiB, 900 used: floor 900 + 100 = 1000 -> not under cur - 0.25%: no change.
    assert shrink_guest(0.10, 1000, 0, 1000, 100) is None
    # 1000 MiB, 870 used: floor 970 -> 3% is a big enough change.
    assert shrink_guest(0.10, 1000, 0, 1000, 130) == pytest.approx(970)


def test_shrink_never_goes_under_balloon_min() -> None:
    # 5% would be 950; the floor is max(balloon_min, 100 used + 100).
    assert shrink_guest(0.10, 1000, 980, 1000, 900) == pytest.approx(980)
    assert shrink_guest(0.10, 1000, 998, 1000, 900) is None  # 0.2%: too small a change


def test_critical_pressure_floors_under_what_the_guest_uses() -> None:
    # host 2% free: guest_free_percent -3%: floor 500 - 30 = 470; 5% step -> 950.
    assert shrink_guest(0.02, 1000, 0, 1000, 500) == pytest.approx(950)
    # 500 MiB guest using 495: floor 495 - 0.03 * 500 = 480, under what it uses
    # ("force guest to swap"); 5% (475) is lifted to it.
    assert shrink_guest(0.02, 500, 0, 500, 5) == pytest.approx(480)
    # One whose floor is over where it is gets no target (size > balloon_cur).
    assert shrink_guest(0.02, 480, 0, 480, -20) is None


def test_change_big_enough_is_over_a_quarter_percent() -> None:
    assert not change_big_enough(1000, 1002.5)
    assert change_big_enough(1000, 1002.6)


def test_grow_steps_5_percent_capped_at_max_and_lifted_to_the_floor() -> None:
    assert grow_guest(800, 1000, 0, 800, 700) == pytest.approx(840)
    assert grow_guest(980, 1000, 0, 980, 900) == pytest.approx(1000)
    # used 700 + 20% of 800 = 860 > 840: the floor wins.
    assert grow_guest(800, 1000, 0, 800, 100) == pytest.approx(860)
    assert grow_guest(1000, 1000, 0, 1000, 900) is None  # not ballooned


def _view(host_free: int, guests: tuple[GuestView, ...], memory: int = 1000 * MiB) -> HostView:
    return HostView(0.0, memory, memory - host_free, 0, 0, 0, 0, 0, guests)


def _guest(actual: int, free: int | None, ram: int = 1000 * MiB) -> GuestView:
    stats = {} if free is None else {"free-memory": free}
    return GuestView("g", ram, 0, actual, actual, stats)


def test_the_policy_runs_every_second_sample_on_the_averages() -> None:
    c = MomBalloon()
    g = _guest(0, 700 * MiB)
    assert c.period == 5.0
    assert c.decide(_view(100 * MiB, (g,))) == {}  # first 5 s sample: no policy yet
    out = c.decide(_view(100 * MiB, (g,)))  # 10% free: shrink 5%
    assert out == {"g": 950 * MiB}


def test_host_free_is_averaged_over_the_last_ten_samples() -> None:
    c = MomBalloon()
    g = _guest(0, 700 * MiB)
    for _ in range(9):
        c.decide(_view(300 * MiB, (g,)))  # 30% free: no pressure, guest not ballooned
    # One sample at 0% free: mean of ten = 27%, still no pressure.
    assert c.decide(_view(0, (g,))) == {}


def test_a_guest_without_stats_is_left_alone() -> None:
    c = MomBalloon()
    g = _guest(0, None)
    c.decide(_view(50 * MiB, (g,)))
    assert c.decide(_view(50 * MiB, (g,))) == {}
