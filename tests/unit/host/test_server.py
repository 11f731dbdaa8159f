"""The host's gRPC service, in process: HostServer on a loopback port, spoken to
through the codec's typed stub — negotiation, a chain and its answer, stats,
close, and the refusals a client sees as one plain status."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from host.server import HostServer
from pagehint.config import HostConfig
from tests.wire import encode_chain, encode_touched
from virtqueue import codec
from virtqueue import features as F

MIB = 1 << 20


@pytest.fixture
async def host() -> AsyncIterator[tuple[HostServer, codec.AioBalloonStub]]:
    server = HostServer(HostConfig(listen="127.0.0.1:0", drain_seconds=1.0))
    addr = await server.start()
    await server.serving()
    channel = grpc.aio.insecure_channel(addr)
    try:
        yield server, codec.aio_stub(channel)
    finally:
        await channel.close()
        await server.stop()


def _negotiation(guest_id: str = "g1") -> codec.NegotiateRequest:
    return codec.encode_negotiate(
        codec.Negotiation(
            guest_id=guest_id,
            ram_bytes=64 * MIB,
            page_size=4096,
            features=F.mask(F.REPORTING),
            poison_val=0,
        )
    )


async def test_a_chain_is_discarded_answered_and_counted(
    host: tuple[HostServer, codec.AioBalloonStub],
) -> None:
    server, stub = host
    acc = codec.decode_accepted(await stub.Negotiate(_negotiation(), timeout=5))
    assert acc.session and acc.backend == "sim" and F.has(acc.features, F.REPORTING)
    call = stub.Reporting(metadata=((codec.SESSION_KEY, acc.session),))
    # The guest's pages are resident once touched; the chain gives two 2 MiB blocks back.
    await call.write(encode_touched([(0, 2048)]))
    await call.write(encode_chain(1, [(0, 9), (512, 9)]))
    used = codec.decode_used(await call.read())  # type: ignore[arg-type]
    assert used.id == 1 and used.status == codec.DONE and used.discarded_pages == 1024
    assert used.resident_bytes == 4 * MIB
    await call.done_writing()
    stats = codec.decode_host_stats(
        await stub.Stats(codec.encode_stats_request(acc.session), timeout=5)
    )
    assert stats.self_guest is not None and stats.self_guest.chains == 1
    assert stats.self_guest.reported_bytes == 4 * MIB
    await stub.Close(codec.encode_close(acc.session), timeout=5)
    assert acc.session not in server.device.table.sessions


async def test_a_stream_without_a_session_is_refused_in_one_line(
    host: tuple[HostServer, codec.AioBalloonStub],
) -> None:
    _, stub = host
    call = stub.Reporting(metadata=((codec.SESSION_KEY, "no-such-session"),))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call.read()
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "\n" not in (e.value.details() or "")


async def test_an_empty_message_is_counted_and_the_stream_goes_on(
    host: tuple[HostServer, codec.AioBalloonStub],
) -> None:
    server, stub = host
    acc = codec.decode_accepted(await stub.Negotiate(_negotiation(), timeout=5))
    call = stub.Reporting(metadata=((codec.SESSION_KEY, acc.session),))
    await call.write(codec.GuestMessage())
    await call.write(encode_chain(7, [(0, 9)]))
    used = codec.decode_used(await call.read())  # type: ignore[arg-type]
    assert used.id == 7 and used.status == codec.DONE
    assert server.device.metrics.refusals["malformed"] == 1
    call.cancel()


async def test_a_bad_negotiation_names_its_problem(
    host: tuple[HostServer, codec.AioBalloonStub],
) -> None:
    _, stub = host
    bad = _negotiation()
    bad.page_size = 8192
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Negotiate(bad, timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page size" in (e.value.details() or "")


async def test_stop_ends_every_session(host: tuple[HostServer, codec.AioBalloonStub]) -> None:
    server, stub = host
    acc = codec.decode_accepted(await stub.Negotiate(_negotiation("g2"), timeout=5))
    assert acc.session in server.device.table.sessions
    await server.stop()
    assert not server.device.table.sessions
