"""Roles apart: an admin identity (the admin certificate, the admin token) reads every
guest's figures and is no guest; a guest identity is no admin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from host.server import HostServer
from pagehint.certs import make_certs
from pagehint.config import HostConfig
from pagehint.tls import load_tls
from tests.logs import log_lines
from virtqueue import codec
from virtqueue import features as F

GUEST_TOKEN = "0123456789abcdef0123"
ADMIN_TOKEN = "fedcba9876543210fedc"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    make_certs(d, ["g1"], [])
    return d


def negotiation(guest_id: str) -> codec.NegotiateRequest:
    return codec.encode_negotiate(
        codec.Negotiation(guest_id, 64 << 20, 4096, F.mask(F.REPORTING), 0)
    )


async def started(cfg: HostConfig, lines: list[str]) -> tuple[HostServer, str]:
    server = HostServer(cfg)
    addr = await server.start()
    await server.serving()
    return server, addr


@pytest.fixture
async def tls_host(certs: Path) -> AsyncIterator[tuple[HostServer, str, list[str]]]:
    tls = load_tls(
        str(certs / "host.crt"), str(certs / "host.key"), str(certs / "ca.crt"), role="server"
    )
    lines = log_lines()
    server, addr = await started(HostConfig(listen="127.0.0.1:0", tls=tls), lines)
    try:
        yield server, addr, lines
    finally:
        await server.stop()


def channel_as(certs: Path, addr: str, who: str) -> grpc.aio.Channel:
    tls = load_tls(*(str(certs / f) for f in (f"{who}.crt", f"{who}.key", "ca.crt")))
    assert tls is not None
    return grpc.aio.secure_channel(addr, tls.channel_credentials())


async def test_the_admin_certificate_may_not_negotiate(
    certs: Path, tls_host: tuple[HostServer, str, list[str]]
) -> None:
    server, addr, lines = tls_host
    async with channel_as(certs, addr, "admin") as ch:
        stub = codec.aio_stub(ch)
        for guest_id in ("admin", "g1"):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Negotiate(negotiation(guest_id), timeout=5)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, e.value
            assert "may not negotiate as a guest" in (e.value.details() or "")
        assert not server.device.table.sessions
        assert server.device.metrics.refusals["admin_as_guest"] == 2
        assert sum("tried to negotiate as guest" in x for x in lines) == 1, lines
        # What it is for still works: every guest's figures.
        await stub.Stats(codec.encode_stats_request(), timeout=5)
    async with channel_as(certs, addr, "guest-g1") as ch:
        stub = codec.aio_stub(ch)
        await stub.Negotiate(negotiation("g1"), timeout=5)  # a guest is a guest
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Stats(codec.encode_stats_request(), timeout=5)  # and no admin
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_the_admin_token_may_not_negotiate() -> None:
    lines = log_lines()
    cfg = HostConfig(listen="127.0.0.1:0", tokens={"g1": GUEST_TOKEN, "admin": ADMIN_TOKEN})
    server, addr = await started(cfg, lines)
    try:
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = codec.aio_stub(ch)
            admin = (("x-pagehint-token", ADMIN_TOKEN),)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Negotiate(negotiation("admin"), timeout=5, metadata=admin)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, e.value
            assert not server.device.table.sessions
            await stub.Stats(codec.encode_stats_request(), timeout=5, metadata=admin)
            guest = (("x-pagehint-token", GUEST_TOKEN),)
            await stub.Negotiate(negotiation("g1"), timeout=5, metadata=guest)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Stats(codec.encode_stats_request(), timeout=5, metadata=guest)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await server.stop()
