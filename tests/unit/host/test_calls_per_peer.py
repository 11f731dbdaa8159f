"""One client cannot hold every connection with calls that never end: the calls an
address has open, across all its connections, are capped (host/calls.py). A Health
Watch never ends and needs no token; before the cap, a client could keep one open
on every connection the host allows, and the idle timeout never closed them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2

from host.server import HostServer
from pagehint.config import HostConfig
from tests.logs import log_lines
from tests.waiting import wait_for

LIMIT = 4


@pytest.fixture
async def host() -> AsyncIterator[tuple[HostServer, list[str]]]:
    lines = log_lines()
    cfg = HostConfig(listen="127.0.0.1:0", drain_seconds=1.0, max_calls_per_peer=LIMIT)
    server = HostServer(cfg)
    await server.start()
    await server.serving()
    try:
        yield server, lines
    finally:
        await server.stop()


def watch(ch: grpc.aio.Channel) -> grpc.aio.UnaryStreamCall[object, object]:
    call = ch.unary_stream(
        "/grpc.health.v1.Health/Watch",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )(health_pb2.HealthCheckRequest(service=""))
    return call  # type: ignore[return-value]


async def check(ch: grpc.aio.Channel) -> grpc.StatusCode:
    call = ch.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    try:
        await call(health_pb2.HealthCheckRequest(service=""), timeout=5)
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


async def test_never_ending_calls_from_one_address_are_capped(
    host: tuple[HostServer, list[str]],
) -> None:
    server, lines = host
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") for _ in range(LIMIT + 1)]
    watches = []
    try:
        # One never-ending call per connection, as a client holding connections would.
        for ch in channels[:LIMIT]:
            w = watch(ch)
            await asyncio.wait_for(w.read(), 5)  # SERVING: the call is open on the host
            watches.append(w)
        # The next call from that address, on a new connection, is refused before it runs.
        assert await check(channels[LIMIT]) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert server.device.metrics.turned_away["calls_per_peer"] == 1
        assert any("--max-calls-per-peer" in line for line in lines)
        # A call that ends gives its place back.
        watches.pop().cancel()
        await wait_for(lambda: sum(server.calls.open.values()) < LIMIT, 5, "a watch to end")
        assert await check(channels[LIMIT]) == grpc.StatusCode.OK
    finally:
        for w in watches:
            w.cancel()
        for ch in channels:
            await ch.close()


def test_the_connection_cap_is_shared_by_every_listening_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # gRPC keeps one connection quota per listening socket: a name that resolves to
    # two addresses listens twice, and each socket gets half the cap.
    import socket

    from host import server as host_server

    two = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 5)),
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 5, 0, 0)),
    ]
    monkeypatch.setattr(host_server.socket, "getaddrinfo", lambda *_a, **_k: two)
    cfg = HostConfig(listen="somehost:5", max_connections=1000)
    assert host_server.listeners(cfg) == 2
    options = dict(host_server.connection_options(cfg))
    assert options["grpc.max_allowed_incoming_connections"] == 500
    assert host_server.listeners(HostConfig(listen="127.0.0.1:5")) == 1
