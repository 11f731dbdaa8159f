"""Reconnect backoff: doubling, capped, half fixed and half random."""

from __future__ import annotations

import random

from guest.balloon.connection import Backoff


def test_doubles_to_the_cap_with_equal_jitter() -> None:
    b = Backoff(minimum=0.1, maximum=2.0, rng=random.Random(1))
    caps = [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    for cap in caps:
        d = b.next()
        assert cap / 2 <= d <= cap
    b.reset()
    assert b.next() <= 0.1


def test_jitter_spreads_guests_that_lost_the_same_host() -> None:
    delays = {round(Backoff(1.0, 8.0, random.Random(seed)).next(), 6) for seed in range(20)}
    assert len(delays) > 10 and all(0.5 <= d <= 1.0 for d in delays)
