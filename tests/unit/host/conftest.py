"""What the host's tests share: a host in process that checks tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc.aio
import pytest

from host.server import HostServer
from pagehint.config import HostConfig
from virtqueue import codec

TOKENS = {"g1": "0123456789abcdef0123", "admin": "fedcba9876543210fedc"}


@pytest.fixture
async def token_host() -> AsyncIterator[tuple[HostServer, codec.AioBalloonStub]]:
    """A host with --tokens (TOKENS: a guest's and the admin's) on a loopback port."""
    cfg = HostConfig(
        listen="127.0.0.1:0", drain_seconds=1.0, tokens=dict(TOKENS), auth_penalty_max=1.0
    )
    server = HostServer(cfg)
    await server.start()
    await server.serving()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield server, codec.aio_stub(channel)
    finally:
        await channel.close()
        await server.stop()
