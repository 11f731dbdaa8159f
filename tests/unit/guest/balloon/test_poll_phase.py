"""Guests that boot in the same instant do not poll the host in the same instant:
each guest's host-figure poll and stats queue start at a random phase of their
period (a load test's 256 guests all polled at its reporting passes' moment)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from guest.balloon import host_view, inflation
from guest.balloon.host_view import HostView


class _Stop(Exception):
    pass


def _sleeps(monkeypatch: pytest.MonkeyPatch, module: Any, n: int) -> list[float]:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) >= n:
            raise _Stop

    monkeypatch.setattr(module.asyncio, "sleep", sleep)
    return waits


async def test_the_first_host_poll_waits_a_random_part_of_the_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    firsts = []
    for _ in range(20):
        view = HostView.__new__(HostView)

        async def refresh() -> None:
            return None

        monkeypatch.setattr(view, "refresh_stats", refresh, raising=False)
        monkeypatch.setattr(view, "stats_period", lambda: 2.0, raising=False)
        waits = _sleeps(monkeypatch, host_view, 2)
        with pytest.raises(_Stop):
            await view.poll_stats()
        assert 0 <= waits[0] < 2.0 and waits[1] == 2.0
        firsts.append(waits[0])
    assert len(set(firsts)) > 10  # spread, not one shared instant


async def test_the_stats_queue_starts_at_a_random_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    from virtqueue import features as F

    firsts = []
    for _ in range(20):
        b = inflation.GuestBalloon.__new__(inflation.GuestBalloon)
        b.stats_interval, b.negotiated, b.features = 1.0, True, F.mask(F.STATS_VQ)
        b.conn = type("C", (), {"stream": None, "connected": asyncio.Event()})()
        waits = _sleeps(monkeypatch, inflation, 2)
        with pytest.raises(_Stop):
            await b.send_stats()
        assert 0 <= waits[0] < 1.0 and waits[1] == 1.0
        firsts.append(waits[0])
    assert len(set(firsts)) > 10
