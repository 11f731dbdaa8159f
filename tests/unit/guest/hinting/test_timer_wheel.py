"""The timer wheel's rounding (kernel/time/timer.c calc_wheel_index/calc_index):
delayed work fires at the first bucket boundary strictly after its expiry, at
the granularity of the level its distance files it in."""

from __future__ import annotations

import statistics

import pytest

from guest.hinting.timer_wheel import bucket_expiry, fire_time, initial_jiffies, lvl_start


def test_level_starts_are_the_kernels() -> None:
    # LVL_START(n) = (LVL_SIZE - 1) << ((n - 1) * LVL_CLK_SHIFT)
    assert [lvl_start(n) for n in (1, 2, 3)] == [63, 504, 4032]


@pytest.mark.parametrize(
    ("clk", "expires", "fires"),
    [
        (0, 10, 11),  # level 0: the next jiffy
        (0, 62, 63),
        (0, 63, 64),  # level 1: 8-jiffy buckets
        (0, 500, 504),  # PAGE_REPORTING_DELAY at HZ=250 from a bucket's start
        (1000, 1500, 1504),
        (4, 504, 512),  # a bucket boundary still moves on: strictly after
        (0, 504, 512),  # level 2: 64-jiffy buckets
        (10, 5, 10),  # already past: the current bucket
    ],
)
def test_bucket_expiry(clk: int, expires: int, fires: int) -> None:
    assert bucket_expiry(expires, clk) == fires


def test_the_2_s_delay_fires_up_to_8_jiffies_late_at_hz_250() -> None:
    lates = [fire_time(t / 1000, 2.0, 250) - t / 1000 - 2.0 for t in range(0, 4000, 3)]
    assert min(lates) > 0 and max(lates) <= 0.032 + 1e-9
    assert 0.012 < statistics.fmean(lates) < 0.02  # 4.5 jiffies less the tick's phase


def test_levels_and_the_wheels_reach_follow_hz() -> None:
    # LVL_DEPTH is 8 at HZ=100, 9 above; past WHEEL_TIMEOUT_CUTOFF the timer is
    # filed at WHEEL_TIMEOUT_MAX in the last level.
    assert bucket_expiry(lvl_start(8) - 1, 0, 100) == ((lvl_start(8) - 1) >> 21) + 1 << 21
    far = 10**12
    assert bucket_expiry(far, 0, 1000) == ((lvl_start(9) - (1 << 24)) >> 24) + 1 << 24
    assert bucket_expiry(far, 0, 100) == ((lvl_start(8) - (1 << 21)) >> 21) + 1 << 21


def test_no_wheel_and_no_delay_are_exact() -> None:
    assert fire_time(12.345, 2.0, 0) == pytest.approx(14.345)
    assert fire_time(12.345, 0.0, 250) == pytest.approx(12.345)


def test_jiffies_count_from_the_guests_boot() -> None:
    # INITIAL_JIFFIES (include/linux/jiffies.h) is 2**32 - 300 * HZ on a 64-bit kernel.
    assert initial_jiffies(250) == 2**32 - 75_000
    # The same request instant in guests booted 4 ms (a jiffy) apart: each guest's
    # buckets are aligned to its own jiffies, so the 2 s timer fires at 8 different
    # instants, where one shared clock fired requests within a bucket together.
    now = 100.0
    own = {round(fire_time(now, 2.0, 250, boot=now - 10.0 - k * 0.004), 6) for k in range(8)}
    assert len(own) == 8
    shared = {round(fire_time(now + k * 0.001, 2.0, 250), 6) for k in range(8)}
    assert len(shared) == 1
    # Within one guest, the wheel is the kernel's from the model's origin (jiffy 0 =
    # INITIAL_JIFFIES at its boot): 500 jiffies from there fire at 504
    # (INITIAL_JIFFIES is a multiple of 8 at HZ=250).
    assert fire_time(7.0, 2.0, 250, boot=7.0) == pytest.approx(7.0 + 504 / 250)


def test_initial_jiffies_moves_the_coarser_levels() -> None:
    # 600 jiffies is level 2 (64-jiffy buckets), aligned to absolute jiffies values;
    # INITIAL_JIFFIES at HZ=250 is 8 mod 64, so counted from the model's origin the
    # timer fires at jiffy 640 - 8 = 632, not 640.
    assert fire_time(0.0, 600 / 250, 250, boot=0.0) == pytest.approx(632 / 250)
