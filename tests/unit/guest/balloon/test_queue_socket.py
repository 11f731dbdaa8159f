"""The guest's side of the queue socket: a stream whose host answers, ends with a
status, goes away or breaks the framing reads as the gRPC stream would (an
answer, or TransportError with one "STATUS: line"); and a real driver reports
through a real host's socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from guest.balloon import BalloonDriver, queue_socket
from guest.balloon.queue_socket import QueueSocketTransport, SocketStream
from guest.balloon.transport import GrpcTransport, TransportError
from guest.mm import BuddyAllocator
from host.server import HostServer
from pagehint.config import GuestConfig, HintingConfig, HostConfig
from virtqueue import codec, framing

MIB = 1 << 20
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def fake_host(tmp_path: Path) -> AsyncIterator[Callable[[Script], Awaitable[str]]]:
    """A Unix socket whose host side runs a script (after reading the hello)."""
    servers: list[asyncio.AbstractServer] = []

    async def start(script: Script) -> str:
        path = str(tmp_path / f"h{len(servers)}.sock")

        async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            hello = await framing.read_frame(r, 1024)
            assert hello == (framing.HELLO, b"tok")
            await script(r, w)
            w.close()

        servers.append(await asyncio.start_unix_server(serve, path))
        return path

    yield start
    for s in servers:
        s.close()


async def test_answers_come_back_decoded(fake_host: Callable[[Script], Awaitable[str]]) -> None:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        got = await framing.read_frame(r, 1 << 16)
        assert got is not None and got[0] == framing.MESSAGE
        chain = codec.GuestMessage.FromString(got[1])
        used = codec.encode_used(codec.UsedMsg(chain.chain.id, discarded_pages=512))
        w.write(framing.frame(framing.USED, used.SerializeToString()))
        await asyncio.sleep(0.2)

    stream = SocketStream(await fake_host(echo), "tok")
    await stream.write(codec.ChainMsg(5, [0], [9]))
    used = await stream.read()
    assert isinstance(used, codec.UsedMsg) and used.id == 5 and used.discarded_pages == 512
    stream.cancel()


@pytest.mark.parametrize(
    ("sent", "line"),
    [
        (framing.frame(framing.END, b"ABORTED: killed by the OOM killer"), "ABORTED: killed"),
        (b"", "UNAVAILABLE: the host closed the queue socket"),
        (framing.frame(framing.USED, b"\xff\xff"), "INTERNAL: an answer that does not decode"),
        (framing.frame(framing.HELLO, b"x"), "INTERNAL: a queue-socket frame of kind 1"),
        (b"\x05\x00", "INTERNAL: the host broke the queue socket's framing"),
    ],
    ids=["status", "gone", "undecodable", "wrong-kind", "cut-short"],
)
async def test_every_end_is_one_status_line_and_stays(
    fake_host: Callable[[Script], Awaitable[str]], sent: bytes, line: str
) -> None:
    async def say(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(sent)
        await w.drain()

    stream = SocketStream(await fake_host(say), "tok")
    for _ in range(2):  # an ended stream stays ended, as a call does
        with pytest.raises(TransportError) as e:
            await asyncio.wait_for(stream.read(), 5)
        assert str(e.value).startswith(line) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("reply", "line"),
    [
        (framing.frame(framing.END, b"UNAUTHENTICATED: no such session"), "the socket of another"),
        (framing.frame(framing.HELLO, b"tok"), "not a pagehint host's socket"),
        (b"", "UNAVAILABLE: --queue-socket"),  # silence
    ],
    ids=["other-host", "not-pagehint", "silent"],
)
async def test_a_stream_opens_only_on_the_hosts_ready(
    fake_host: Callable[[Script], Awaitable[str]],
    monkeypatch: pytest.MonkeyPatch,
    reply: bytes,
    line: str,
) -> None:
    monkeypatch.setattr(queue_socket, "OPEN_SECONDS", 0.2)

    async def ready(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(framing.frame(framing.READY, b""))
        await asyncio.sleep(0.5)

    ok = SocketStream(await fake_host(ready), "tok")
    await ok.opened()
    ok.cancel()

    async def say(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(reply)
        await asyncio.sleep(0.5)

    stream = SocketStream(await fake_host(say), "tok")
    with pytest.raises(TransportError) as e:
        await stream.opened()
    assert line in str(e.value) and "\n" not in str(e.value)
    assert "--queue-socket" in str(e.value)  # what the guest's start-up error names


async def test_a_stream_cancelled_while_connecting_reads_as_cancelled(
    fake_host: Callable[[Script], Awaitable[str]],
) -> None:
    async def idle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(1)

    stream = SocketStream(await fake_host(idle), "tok")
    stream.cancel()  # before its connection is made
    for op in (stream.read(), stream.write(codec.ChainMsg(1, [0], [9]))):
        with pytest.raises(TransportError, match=r"^CANCELLED: "):
            await op


async def test_no_socket_is_unavailable_naming_the_path(tmp_path: Path) -> None:
    stream = SocketStream(str(tmp_path / "none.sock"), "tok")
    with pytest.raises(TransportError, match=r"UNAVAILABLE: --queue-socket .*none\.sock: "):
        await stream.write(codec.ChainMsg(1, [0], [9]))
    stream.cancel()


async def test_no_socket_fails_the_negotiation_before_any_session(tmp_path: Path) -> None:
    # A host that does serve gRPC: the negotiation would succeed over it.
    host = HostServer(HostConfig(listen="127.0.0.1:0"))
    addr = await host.start()
    t = QueueSocketTransport(GrpcTransport(addr), str(tmp_path / "none.sock"))
    n = codec.Negotiation("g", ram_bytes=64 * MIB, page_size=4096, features=0, poison_val=0)
    try:
        with pytest.raises(TransportError, match=r"UNAVAILABLE: --queue-socket .*none\.sock"):
            await t.negotiate(n, timeout=5)
        assert host.device.table.sessions == {}
    finally:
        await t.aclose()
        await host.stop()


async def test_a_driver_reports_through_a_real_hosts_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sock")
    host = HostServer(HostConfig(listen="127.0.0.1:0", queue_socket=path, drain_seconds=1.0))
    addr = await host.start()
    cfg = GuestConfig(
        ram_bytes=64 * MIB,
        host=addr,
        guest_id="qs",
        queue_socket=path,
        hinting=HintingConfig(capacity=32),
    )
    driver = BalloonDriver(cfg, BuddyAllocator(64 * MIB))
    try:
        await driver.start()
        await asyncio.wait_for(driver.report([(0, 9), (512, 9)]), 5)
        session = next(iter(host.device.table.sessions.values()))
        assert session.totals.chains == 1 and session.streams == 1
        assert host.service.queue.device.metrics.chains == 1
    finally:
        await driver.stop()
        await host.stop()
