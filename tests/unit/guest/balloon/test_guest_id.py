"""The guest's id held by a session it did not open: wait while it may still go, give
up in one line once another client holds it for good; and a final answer mid-run
(a RAM file refused) ends the guest instead of being retried forever."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import pytest

from guest.balloon import connection as C
from guest.balloon.connection import Connection, GuestIdLost
from guest.balloon.transport import TransportError
from guest.ram import HOST_FOLDER, RAM_NAME
from host import sessions as D
from host.memory import shm
from pagehint.config import HostConfig
from pagehint.errors import UsageError
from tests.unit.guest.balloon.fakehost import FakeHost
from tests.unit.guest.balloon.test_connection import _connection
from tests.waiting import wait_for
from virtqueue import features as F
from virtqueue.codec import Accepted, Negotiation

RAM = 64 << 20


class InUseHost(FakeHost):
    """FakeHost answering as host/service.py does: SessionInUse is ALREADY_EXISTS;
    with ``identity``, the caller proved to be that guest (TLS or a token)."""

    def __init__(self, identity: str | None = None, **kw: object) -> None:
        super().__init__(**kw)
        self.identity = identity

    async def negotiate(self, n: Negotiation, timeout: float) -> Accepted:
        await asyncio.sleep(0)
        try:
            s, fence = self.device.table.negotiate(n, self.identity)
        except D.SessionInUse as e:
            raise TransportError(f"ALREADY_EXISTS: {e}") from None
        return self.device.accepted(s, fence)

    def another_client(self) -> str:
        s, _ = self.device.table.negotiate(
            Negotiation("g", RAM, 4096, F.mask(F.REPORTING), 0, ""), self.identity
        )
        return s.token


@contextlib.asynccontextmanager
async def kept(
    host: FakeHost, accept: object = None
) -> AsyncIterator[tuple[Connection, list[str], list[UsageError]]]:
    conn, lines = _connection(host, accept)
    fatal: list[UsageError] = []
    conn.on_fatal.append(fatal.append)
    await conn.connect()
    keeper = asyncio.create_task(conn.keep_connected())
    try:
        yield conn, lines, fatal
    finally:
        await conn.close()
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper


def test_the_guests_copies_of_the_hosts_rules_agree() -> None:
    # The guest cannot import the host: what it knows of the host's rules it copies.
    assert C.HOST_STALE_AFTER == D.STALE_AFTER
    assert HostConfig().session_timeout == C.HOST_SESSION_TIMEOUT
    assert RAM_NAME.pattern == shm._RAM_NAME.pattern
    assert HOST_FOLDER.fullmatch(f"{shm.PRIVATE_PREFIX}{os.getpid()}")


async def test_an_id_another_client_keeps_ends_the_guest_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(C, "HOST_STALE_AFTER", 0.1)  # a bound of 0.2 s
    host = InUseHost(session_timeout=0.05)
    async with kept(host) as (conn, lines, fatal):
        assert conn.id_wait_bound() == pytest.approx(0.2)
        # Paused past its session's end; meanwhile another client took the id.
        host.device.table.end(conn.session, "timed out")
        host.another_client()
        host.break_streams()
        await wait_for(lambda: bool(fatal), 5, "the guest to give up")
    (e,) = fatal
    assert isinstance(e, GuestIdLost) and conn.fatal is e
    assert str(e).startswith("guest id 'g' was taken by another client (host fake:1: ")
    assert str(e).endswith("; exiting") and "\n" not in str(e)
    assert len([x for x in lines if "did not open" in x]) == 1, lines
    assert not [x for x in lines if x.startswith("reconnect to")]  # that line says it all


async def test_a_takeover_the_host_names_is_final_at_once() -> None:
    host = InUseHost(identity="g")  # the same proven identity may take the id over
    async with kept(host) as (conn, lines, fatal):
        assert conn.id_wait_bound() == 60  # twice the host's 30 s session timeout...
        host.another_client()  # ends this guest's session and remembers the takeover
        host.break_streams()
        # ...not waited: the host said the id was taken over.
        await wait_for(lambda: bool(fatal), 5, "the guest to give up")
    assert "taken over" in str(fatal[0]) and "was taken by another client" in str(fatal[0])
    assert not [x for x in lines if "did not open" in x]


async def test_a_stray_session_of_its_own_that_goes_is_waited_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(C, "HOST_STALE_AFTER", 5.0)
    host = InUseHost(session_timeout=5.0)
    async with kept(host) as (conn, lines, fatal):
        first = conn.session
        host.device.table.end(first, "timed out")
        stray = host.another_client()  # as a negotiation whose answer was lost
        host.break_streams()
        await wait_for(lambda: any("did not open" in x for x in lines), 5, "the wait said")
        host.device.table.end(stray, "timed out")
        await wait_for(lambda: conn.connected.is_set() and conn.session != first, 5, "back")
        assert not fatal and conn.held_since is None


async def test_a_final_answer_on_a_reconnect_ends_the_guest_and_its_new_session() -> None:
    host = FakeHost()
    calls = 0

    def accept(acc: Accepted) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise UsageError("host fake:1 named RAM file /etc/passwd: not in this guest's ...")

    async with kept(host, accept) as (conn, _lines, fatal):
        first = conn.session
        host.break_streams()
        await wait_for(lambda: bool(fatal), 5, "the guest to give up")
        assert "/etc/passwd" in str(fatal[0])
        assert calls == 2, "given up, not retried"
        assert first not in host.device.table.sessions and not host.device.table.sessions
