"""Connection: one session at a time; a broken stream is reconnected with backoff
under a new session that names (and so fences) the old one."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

import pytest

from guest.balloon.connection import Backoff, Connection, SessionUnusable
from guest.balloon.transport import NegotiationRefused
from guest.balloon.window import ChainWindow
from tests.logs import log_lines
from tests.unit.guest.balloon.fakehost import FakeHost
from tests.waiting import wait_for
from virtqueue import features as F
from virtqueue.codec import Accepted, Negotiation

RAM = 64 << 20


def _negotiation(previous: str) -> Negotiation:
    return Negotiation("g", RAM, 4096, F.mask(F.REPORTING), 0, previous)


def _connection(host: FakeHost, accept: object = None) -> tuple[Connection, list[str]]:
    lines = log_lines()
    conn = Connection(
        host,
        ChainWindow(),
        negotiation=_negotiation,
        accept=accept if accept is not None else (lambda _acc: None),  # type: ignore[arg-type]
        address="fake:1",
        backoff=Backoff(0.01, 0.05, random.Random(1)),
    )
    return conn, lines


@pytest.fixture
async def kept() -> AsyncIterator[tuple[FakeHost, Connection, list[str]]]:
    host = FakeHost()
    conn, lines = _connection(host)
    await conn.connect()
    keeper = asyncio.create_task(conn.keep_connected())
    try:
        yield host, conn, lines
    finally:
        await conn.close()
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper


async def test_a_broken_stream_is_reconnected_and_the_old_session_fenced(
    kept: tuple[FakeHost, Connection, list[str]],
) -> None:
    host, conn, lines = kept
    first = conn.session
    host.break_streams()
    await wait_for(lambda: conn.connects == 2 and conn.connected.is_set(), 5, "a reconnect")
    assert conn.session != first and conn.fences == 1
    # The new negotiation named the old session: that is what fences it.
    assert host.negotiations[-1].previous_session == first
    assert first not in host.device.table.sessions
    assert any("host connection lost" in line for line in lines)


async def test_an_outage_is_retried_until_the_host_is_back(
    kept: tuple[FakeHost, Connection, list[str]],
) -> None:
    host, conn, lines = kept
    host.down = True
    host.break_streams()
    await wait_for(lambda: any("retrying" in line for line in lines), 5, "a failed retry")
    assert not conn.connected.is_set()
    host.down = False
    await wait_for(conn.connected.is_set, 5, "the host back")
    assert conn.backoff.attempt == 0  # reset by the success


async def test_a_stream_that_does_not_open_is_a_failed_connect_backed_off(
    kept: tuple[FakeHost, Connection, list[str]],
) -> None:
    # The host negotiates but will not take the stream: no loop of sessions opened
    # as fast as they fail; the backoff grows, and each new negotiation names the
    # last session, so the host ends it.
    host, conn, _ = kept
    host.refuse_streams = True
    host.break_streams()
    await wait_for(lambda: conn.backoff.attempt >= 3, 5, "retries backing off")
    assert not conn.connected.is_set()
    tried = len(host.negotiations)
    assert len(host.device.table.sessions) <= 1  # only the last, which the next fences
    host.refuse_streams = False
    await wait_for(conn.connected.is_set, 5, "the stream opened")
    assert conn.backoff.attempt == 0 and len(host.negotiations) > tried
    assert len(host.device.table.sessions) == 1


async def test_an_unusable_session_is_closed_and_refused() -> None:
    host = FakeHost()

    def refuse(acc: Accepted) -> None:
        raise SessionUnusable("chains too small")

    conn, _ = _connection(host, refuse)
    with pytest.raises(NegotiationRefused, match="chains too small"):
        await conn.connect()
    assert not host.device.table.sessions  # closed on the host, nothing left behind


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    b = Backoff(0.1, 1.0, random.Random(0))
    delays = [b.next() for _ in range(8)]
    caps = [min(1.0, 0.1 * 2**i) for i in range(8)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, caps, strict=True))
    b.reset()
    assert b.next() <= 0.1
