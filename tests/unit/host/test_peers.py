"""Per-client limits: one address cannot hold every session, and failed tokens slow
their address down (guesses are not checked while it is penalised)."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import grpc.aio
import pytest

from host.device import BalloonDevice
from host.memory.sim import SimBackend
from host.peers import FORGET_AFTER, PENALTY_FIRST, AuthThrottle, peer_address
from host.server import HostServer
from host.sessions import LimitReached, PeerLimitReached
from pagehint.config import HostConfig
from tests.unit.host.conftest import TOKENS
from tests.waiting import wait_for
from virtqueue import codec
from virtqueue import features as F
from virtqueue.codec import TOKEN_KEY

MIB = 1 << 20


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:5000", "127.0.0.1"),
        ("ipv6:%5B::1%5D:5000", "::1"),
        ("ipv6:[2001:db8::7]:443", "2001:db8::7"),
        ("unix:/run/pagehint.sock", "unix:/run/pagehint.sock"),
        ("", ""),
    ],
)
def test_a_client_is_its_address_without_the_port(peer: str, address: str) -> None:
    assert peer_address(peer) == address


def test_penalties_double_up_to_the_maximum_and_are_forgotten() -> None:
    t = AuthThrottle(penalty_max=1.0)
    assert t.wait("a", now=0.0) == 0.0
    got = [t.failed("a", now=float(i)) for i in range(6)]
    assert got == [PENALTY_FIRST, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert t.wait("a", now=5.5) == pytest.approx(0.5) and t.wait("b", now=5.5) == 0.0
    assert t.wait("a", now=5.0 + FORGET_AFTER + 1) == 0.0  # a quiet spell: forgotten
    assert t.failed("a", now=5.0 + FORGET_AFTER + 2) == PENALTY_FIRST
    assert t.failures == 7


def test_the_penalty_table_is_bounded_and_can_be_off() -> None:
    t = AuthThrottle(penalty_max=10.0, max_tracked=3)
    for i in range(10):
        t.failed(f"10.0.0.{i}", now=0.0)
    assert t.wait("10.0.0.0", now=0.01) == 0.0 and t.wait("10.0.0.9", now=0.01) > 0
    off = AuthThrottle(penalty_max=0.0)
    assert off.failed("a") == 0.0 and off.wait("a") == 0.0


def negotiate(d: BalloonDevice, guest: str, peer: str, previous: str = "") -> str:
    s, _ = d.table.negotiate(
        codec.Negotiation(guest, 64 * MIB, 4096, F.mask(F.REPORTING), 0, previous), peer=peer
    )
    return s.token


def test_one_address_holds_at_most_its_quota_of_sessions() -> None:
    d = BalloonDevice(SimBackend(), max_sessions=8, max_sessions_per_peer=3)
    tokens = [negotiate(d, f"a{i}", "10.0.0.1") for i in range(3)]
    with pytest.raises(PeerLimitReached, match="address is at its limit of 3 sessions"):
        negotiate(d, "a3", "10.0.0.1")
    # Another address is not held back, and in-process callers (no address) neither.
    for i in range(3):
        negotiate(d, f"b{i}", "10.0.0.2")
    negotiate(d, "local", "")
    negotiate(d, "local2", "")  # 8: the host's own limit is reached
    with pytest.raises(LimitReached, match="limit of 8 sessions"):
        negotiate(d, "c", "10.0.0.3")
    # A guest that resumes its own session is not a new one.
    tokens[0] = negotiate(d, "a0", "10.0.0.1", previous=tokens[0])
    d.table.end(tokens[1], "closed")
    negotiate(d, "a3", "10.0.0.1")  # a slot of the address freed up
    assert d.table.per_peer["10.0.0.1"] == 3 and d.metrics.turned_away["peer_limit"] == 1
    assert d.metrics.turned_away["session_limit"] == 1


def offer(guest_id: str = "g1") -> codec.NegotiateRequest:
    return codec.encode_negotiate(
        codec.Negotiation(guest_id, 64 * MIB, 4096, F.mask(F.REPORTING), 0)
    )


async def guess(stub: codec.AioBalloonStub, i: int, timeout: float = 30) -> grpc.StatusCode:
    try:
        await stub.Negotiate(offer(), metadata=((TOKEN_KEY, f"guess-{i:016d}"),), timeout=timeout)
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


async def test_token_guesses_are_slowed_and_honest_guests_still_get_in(
    token_host: tuple[HostServer, codec.AioBalloonStub],
) -> None:
    server, stub = token_host
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    # A guesser that waits for each answer: every answer waits out its penalty,
    # doubled per failure up to --auth-penalty-max (1 s here).
    codes = Counter([await guess(stub, i) for i in range(6)])
    assert codes == {grpc.StatusCode.UNAUTHENTICATED: 6}, codes
    # 0.1 + 0.2 + 0.4 + 0.8 + 1 + 1 s (it was ~1 ms a guess: 960 guesses a second)
    assert loop.time() - t0 >= 3.4
    assert server.device.metrics.refusals["bad_token"] == 6
    # A guest with the right token, from the same address while a guess is out, is
    # held for the rest of the address's penalty and then gets in: a guesser beside
    # it delays it (by at most --auth-penalty-max), never shuts it out.
    pending = asyncio.ensure_future(guess(stub, 99))
    await wait_for(
        lambda: server.device.metrics.refusals["bad_token"] == 7, 5, "the guess to be checked"
    )
    t1 = loop.time()
    await stub.Negotiate(offer(), metadata=((TOKEN_KEY, TOKENS["g1"]),), timeout=30)
    assert 0.5 <= loop.time() - t1 <= 5
    assert server.service.gate.auth.throttled >= 1
    assert await pending == grpc.StatusCode.UNAUTHENTICATED


async def test_an_impatient_guesser_learns_nothing_from_the_time_of_an_answer(
    token_host: tuple[HostServer, codec.AioBalloonStub],
) -> None:
    server, stub = token_host
    pending = asyncio.ensure_future(guess(stub, 0))
    await wait_for(
        lambda: server.device.metrics.refusals["bad_token"] == 1, 5, "the guess to be checked"
    )
    # While the address is penalised, the right token's answer also waits: a guesser
    # that gives up after a few ms cannot tell a right guess by a quick answer.
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Negotiate(offer(), metadata=((TOKEN_KEY, TOKENS["g1"]),), timeout=0.02)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await pending == grpc.StatusCode.UNAUTHENTICATED
    assert server.device.table.by_guest.get("g1") is None  # no session was made meanwhile


async def test_guesses_at_the_admin_token_are_slowed_not_final(
    token_host: tuple[HostServer, codec.AioBalloonStub],
) -> None:
    server, stub = token_host

    async def host_wide(token: str) -> grpc.StatusCode:
        try:
            await stub.Stats(
                codec.encode_stats_request(), metadata=((TOKEN_KEY, token),), timeout=5
            )
        except grpc.aio.AioRpcError as e:
            return e.code()
        return grpc.StatusCode.OK

    assert await host_wide("not-the-admin-token!") == grpc.StatusCode.PERMISSION_DENIED
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    # Right after a guess the right token is held for the penalty, then let in.
    assert await host_wide(TOKENS["admin"]) == grpc.StatusCode.OK
    assert loop.time() - t0 >= PENALTY_FIRST * 0.5
    assert server.device.metrics.refusals["bad_token"] == 1


async def test_one_client_cannot_take_every_session_by_default() -> None:
    # HostConfig's defaults: 1024 sessions, 256 of them for one address.
    server = HostServer(
        HostConfig(listen="127.0.0.1:0", drain_seconds=1.0),
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = codec.aio_stub(channel)
            for i in range(256):
                await stub.Negotiate(offer(f"flood-{i}"), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Negotiate(offer("flood-256"), timeout=5)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "address is at its limit of 256 sessions" in (e.value.details() or "")
        assert server.device.table.per_peer == {"127.0.0.1": 256}
    finally:
        await server.stop()
