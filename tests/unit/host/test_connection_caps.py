"""Connections that never negotiate cannot lock the host up: silent ones are closed at
the handshake timeout, idle HTTP/2 ones at the idle timeout, those past the cap at
once, and the host says when it is at the cap. (Bounded: tens of sockets, 127.0.0.1.)"""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator, Iterator

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2

from host.limits import ConnectionWatch, _address, connections_by_peer
from host.server import HostServer
from pagehint.config import HostConfig
from tests.logs import log_lines
from tests.waiting import wait_for

# What an HTTP/2 client sends first: the preface and an empty SETTINGS frame.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def closed_by_peer(s: socket.socket) -> bool:
    """Has the host closed this connection? (Whatever it sent first is read away.)"""
    try:
        while True:
            if s.recv(65536) == b"":
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    try:
        yield held
    finally:
        for s in held:
            s.close()


def connect(port: int, n: int, held: list[socket.socket], preface: bool = False) -> None:
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setblocking(False)
        if preface:
            s.sendall(PREFACE)
        held.append(s)


async def started(cfg: HostConfig, lines: list[str]) -> HostServer:
    server = HostServer(cfg)
    await server.start()
    await server.serving()
    return server


@pytest.fixture
async def host() -> AsyncIterator[tuple[HostServer, list[str]]]:
    lines = log_lines()
    server = await started(HostConfig(listen="127.0.0.1:0", drain_seconds=1.0), lines)
    try:
        yield server, lines
    finally:
        await server.stop()


async def health(port: int) -> bool:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        # The method itself, typed (the stubs' HealthStub declares no methods).
        check = ch.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            reply = await check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def test_silent_connections_are_closed_at_the_handshake_timeout(
    host: tuple[HostServer, list[str]], sockets: list[socket.socket]
) -> None:
    server, _ = host
    connect(server.port, 20, sockets)  # TCP only: never a byte of HTTP/2
    # HostConfig's default handshake timeout is 2 s (gRPC's own is 120 s).
    await wait_for(lambda: all(map(closed_by_peer, sockets)), 6, "silent connections closed")


async def test_idle_http2_connections_are_closed_at_the_idle_timeout(
    host: tuple[HostServer, list[str]], sockets: list[socket.socket]
) -> None:
    server, _ = host
    connect(server.port, 20, sockets, preface=True)  # HTTP/2 started, then no call
    # HostConfig's default idle timeout is 2 s (gRPC's own: never).
    await wait_for(lambda: all(map(closed_by_peer, sockets)), 6, "idle connections closed")
    assert await health(server.port)


async def test_connections_past_the_cap_are_turned_away_and_said(
    sockets: list[socket.socket],
) -> None:
    lines = log_lines()
    cfg = HostConfig(listen="127.0.0.1:0", drain_seconds=1.0, max_connections=8)
    server = await started(cfg, lines)
    try:
        connect(server.port, 30, sockets)
        await wait_for(
            lambda: sum(not closed_by_peer(s) for s in sockets) <= 8, 3, "the cap to hold"
        )
        assert sum(connections_by_peer(server.port).values()) <= 8
        await server.look_at_connections()  # the janitor's look, once a second
        server.device.problems.flush(force=True)
        said = [line for line in lines if "connections open, the cap is 8" in line]
        assert said and "127.0.0.1" in said[0], lines
        # The silent ones go at the handshake timeout: then the host answers again.
        await wait_for(lambda: all(map(closed_by_peer, sockets)), 6, "the slots to free up")
        assert await health(server.port)
    finally:
        await server.stop()


def test_the_watch_is_quiet_far_from_the_cap() -> None:
    watch = ConnectionWatch(port=1, cap=1 << 20, handshake_timeout=2, idle=2)
    assert watch.look() is None and watch.descriptors > 0 and watch.at_cap == 0


@pytest.mark.parametrize(
    ("hexaddr", "v6", "text"),
    [
        ("0100007F", False, "127.0.0.1"),
        ("00000000000000000000000001000000", True, "::1"),
        ("0000000000000000FFFF00000100007F", True, "127.0.0.1"),  # IPv4 on a [::] listener
    ],
)
def test_proc_net_tcp_addresses_are_read_as_written(hexaddr: str, v6: bool, text: str) -> None:
    # /proc/net/tcp prints each 32-bit word in the machine's order (little-endian here).
    if sys.byteorder != "little":
        pytest.skip("the examples are little-endian")
    assert _address(hexaddr, v6) == text
