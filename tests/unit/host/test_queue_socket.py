"""The host's queue socket (--queue-socket), spoken to in raw frames: a stream is
admitted by its session's token, answers as the gRPC stream does, and ends with
one status line; what breaks the framing, never says who it is, or comes past the
connection cap is turned away and the host keeps serving; the path it is given
is never someone's file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import grpc.aio
import pytest

from host.queue_socket import listen_at, share
from host.server import HostServer
from pagehint.config import HostConfig
from pagehint.errors import UsageError
from tests.waiting import wait_for
from tests.wire import encode_chain, encode_touched
from virtqueue import codec, framing
from virtqueue import features as F

MIB = 1 << 20
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[tuple[HostServer, codec.AioBalloonStub, str]]:
    path = str(tmp_path / "q.sock")
    cfg = HostConfig(
        listen="127.0.0.1:0",
        drain_seconds=1.0,
        queue_socket=path,
        handshake_timeout=0.3,
        max_connections=8,  # 4 of them the socket's
    )
    server = HostServer(cfg)
    addr = await server.start()
    await server.serving()
    channel = grpc.aio.insecure_channel(addr)
    try:
        yield server, codec.aio_stub(channel), path
    finally:
        await channel.close()
        await server.stop()


async def negotiate(stub: codec.AioBalloonStub, guest_id: str = "g1", balloon: bool = False) -> str:
    n = codec.Negotiation(
        guest_id=guest_id,
        ram_bytes=64 * MIB,
        page_size=4096,
        features=F.mask(F.REPORTING),
        poison_val=0,
        balloon=balloon,
    )
    acc = codec.decode_accepted(await stub.Negotiate(codec.encode_negotiate(n), timeout=5))
    return acc.session


async def connect(path: str, session: str | None) -> Conn:
    reader, writer = await asyncio.open_unix_connection(path)
    if session is not None:
        writer.write(framing.frame(framing.HELLO, session.encode()))
    return reader, writer


def send(conn: Conn, msg: codec.GuestMessage) -> None:
    conn[1].write(framing.frame(framing.MESSAGE, msg.SerializeToString()))


async def answer(conn: Conn) -> tuple[int, bytes] | None:
    """The host's next frame but READY (which says the session is the host's)."""
    while True:
        got = await asyncio.wait_for(framing.read_frame(conn[0], 1 << 20), 5)
        if got is None or got[0] != framing.READY:
            return got


async def end_line(conn: Conn) -> str:
    while (got := await answer(conn)) is not None and got[0] == framing.USED:
        pass  # answers (a config change, say) before the end
    assert got is not None and got[0] == framing.END, got
    line = got[1].decode()
    assert "\n" not in line
    assert await answer(conn) is None, "nothing after the end"
    return line


async def test_a_chain_is_discarded_answered_and_counted(
    host: tuple[HostServer, codec.AioBalloonStub, str],
) -> None:
    server, stub, path = host
    session = await negotiate(stub)
    conn = await connect(path, session)
    # The hello named a session of this host's: READY, before any answer.
    assert await asyncio.wait_for(framing.read_frame(conn[0], 1024), 5) == (framing.READY, b"")
    send(conn, encode_touched([(0, 2048)]))
    send(conn, encode_chain(1, [(0, 9), (512, 9)]))
    got = await answer(conn)
    assert got is not None and got[0] == framing.USED
    used = codec.decode_used(codec.Used.FromString(got[1]))
    assert used.id == 1 and used.status == codec.DONE and used.discarded_pages == 1024
    assert used.resident_bytes == 4 * MIB
    stats = codec.decode_host_stats(
        await stub.Stats(codec.encode_stats_request(session), timeout=5)
    )
    assert stats.self_guest is not None and stats.self_guest.chains == 1
    # Closing the session over gRPC ends the socket's stream with a status.
    await stub.Close(codec.encode_close(session), timeout=5)
    assert (await end_line(conn)).startswith("UNAUTHENTICATED: session ended")
    assert server.device.table.sessions == {}


async def test_a_guest_that_ends_its_stream_leaves_no_error_behind(
    host: tuple[HostServer, codec.AioBalloonStub, str],
) -> None:
    # A guest with the rest of the balloon: its stream is served with a reader task
    # of its own (host/queue.py with_notices), which must be gone before the host's
    # lingering close reads the same socket.
    server, stub, path = host
    errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    session = await negotiate(stub, balloon=True)
    conn = await connect(path, session)
    send(conn, encode_chain(1, [(0, 9)]))
    s = server.device.table.sessions[session]
    await wait_for(lambda: s.totals.chains == 1, 5, "the chain answered")
    # As a guest ends its run: the session closed over gRPC, its stream still open.
    await stub.Close(codec.encode_close(session), timeout=5)
    assert (await end_line(conn)).startswith("UNAUTHENTICATED: session ended")
    conn[1].close()  # the guest, told, closes: the host's lingering close ends
    qs = server.queue_socket
    assert qs is not None
    await wait_for(lambda: not qs.connections, 5, "the connection's end")
    await asyncio.sleep(0)  # its task's end reaches the loop's handler
    assert errors == []
    assert server.queue_socket is not None and not server.queue_socket.connections


async def test_a_stream_without_a_session_ends_in_one_line(
    host: tuple[HostServer, codec.AioBalloonStub, str],
) -> None:
    server, _, path = host
    conn = await connect(path, "no-such-session")
    assert (await end_line(conn)).startswith("UNAUTHENTICATED: ")
    assert server.device.metrics.refusals["unknown_session"] == 1


@pytest.mark.parametrize(
    "bad",
    [
        framing.frame(framing.MESSAGE, b"\xff\xff\xff"),  # does not decode
        framing.frame(framing.USED, b""),  # a host's kind, from a guest
        struct.pack("<I", 10 << 20),  # a frame far over the limit
        struct.pack("<IB", 1, 99),  # a kind nobody knows
    ],
    ids=["undecodable", "wrong-kind", "oversized", "unknown-kind"],
)
async def test_a_broken_frame_ends_the_stream_and_the_host_serves_on(
    host: tuple[HostServer, codec.AioBalloonStub, str], bad: bytes
) -> None:
    server, stub, path = host
    conn = await connect(path, await negotiate(stub))
    conn[1].write(bad)
    assert (await end_line(conn)).startswith("INVALID_ARGUMENT: ")
    assert server.device.metrics.refusals["malformed"] >= 1
    # Another guest's stream is served as before.
    other = await connect(path, await negotiate(stub, "g2"))
    send(other, encode_chain(7, [(0, 9)]))
    got = await answer(other)
    assert got is not None and codec.Used.FromString(got[1]).id == 7


async def test_a_first_frame_that_is_not_a_hello_is_refused(
    host: tuple[HostServer, codec.AioBalloonStub, str],
) -> None:
    _, _, path = host
    conn = await connect(path, None)
    send(conn, encode_chain(1, [(0, 9)]))
    assert (await end_line(conn)).startswith("INVALID_ARGUMENT: the first frame")


async def test_a_silent_connection_is_closed_at_the_handshake_timeout(
    host: tuple[HostServer, codec.AioBalloonStub, str],
) -> None:
    server, _, path = host
    conn = await connect(path, None)
    assert await answer(conn) is None  # closed, within 5 s (the timeout is 0.3 s)
    assert server.queue_socket is not None and not server.queue_socket.connections


async def test_connections_past_the_cap_are_closed_at_once(
    host: tuple[HostServer, codec.AioBalloonStub, str],
) -> None:
    server, _, path = host
    held = [await connect(path, None) for _ in range(4)]
    qs = server.queue_socket
    assert qs is not None
    await wait_for(lambda: len(qs.connections) == 4, 5, "four connections accepted")
    extra = await connect(path, None)
    assert await asyncio.wait_for(framing.read_frame(extra[0], 1024), 0.25) is None
    assert server.device.metrics.queue_socket_refused == 1
    for _, w in held:
        w.close()


async def test_the_socket_is_the_hosts_only_and_goes_at_stop(tmp_path: Path) -> None:
    path = tmp_path / "q.sock"
    server = HostServer(HostConfig(listen="127.0.0.1:0", queue_socket=str(path)))
    await server.start()
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    await server.stop()
    assert not path.exists()


def test_a_file_at_the_path_is_never_removed(tmp_path: Path) -> None:
    f = tmp_path / "precious"
    f.write_text("keep me")
    with pytest.raises(UsageError, match="exists and is not a socket"):
        listen_at(str(f), 8)
    assert f.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]  # nothing left beside


def test_a_killed_hosts_socket_is_taken_over_and_a_live_one_is_not(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sock")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path)
    live.listen()
    with pytest.raises(UsageError, match="another process is listening"):
        listen_at(path, 8)
    live.close()  # the file stays, nobody listens: what a SIGKILL leaves
    assert os.path.exists(path)
    sock, _ = listen_at(path, 8)
    try:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(path)  # the new socket answers at the path
        probe.close()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        sock.close()


async def test_stop_leaves_a_socket_that_is_no_longer_its_own(tmp_path: Path) -> None:
    path = tmp_path / "q.sock"
    server = HostServer(HostConfig(listen="127.0.0.1:0", queue_socket=str(path)))
    await server.start()
    path.unlink()
    path.write_text("someone else's now")
    await server.stop()
    assert path.read_text() == "someone else's now"


def test_the_connection_cap_is_shared_with_grpc() -> None:
    # A socket guest holds a connection on each: together never over the cap.
    for cap in (2, 3, 16, 4096):
        grpc_cap, socket_cap = share(cap)
        assert grpc_cap + socket_cap == cap and grpc_cap >= 1 and socket_cap >= 1
    with pytest.raises(UsageError, match="--max-connections 1: at least 2 with --queue-socket"):
        HostConfig(queue_socket="/tmp/q.sock", max_connections=1)


async def test_a_second_stream_of_one_session_is_refused(
    host: tuple[HostServer, codec.AioBalloonStub, str],
) -> None:
    _, stub, path = host
    session = await negotiate(stub)
    first = await connect(path, session)
    send(first, encode_chain(1, [(0, 9)]))
    assert await answer(first) is not None  # open, and counted
    second = await connect(path, session)
    assert (await end_line(second)).startswith("RESOURCE_EXHAUSTED: ")


async def test_a_session_ended_while_the_guest_does_not_read_still_says_why(
    host: tuple[HostServer, codec.AioBalloonStub, str],
) -> None:
    # The guest writes chains and reads nothing: the host's answers fill the socket
    # and it waits for the guest to read. The session's end lands in that wait, and
    # the stream still ends with its status.
    server, stub, path = host
    session = await negotiate(stub)
    conn = await connect(path, session)

    async def flood() -> None:
        for i in range(1_000_000):
            send(conn, encode_chain(i + 1, [(0, 0)]))
            if i % 1000 == 0:
                await conn[1].drain()

    writing = asyncio.create_task(flood())
    s = server.device.table.sessions[session]
    answered = -1
    for _ in range(100):  # until the host stops answering (it waits), within 30 s
        if answered == s.totals.chains:
            break
        answered = s.totals.chains
        await asyncio.sleep(0.3)  # a quiet period is the condition: it takes a period
    assert not writing.done() and s.streams == 1
    writing.cancel()
    await stub.Close(codec.encode_close(session), timeout=5)
    last = None
    while (got := await answer(conn)) is not None:
        last = got
    assert last is not None and last[0] == framing.END, last
    assert last[1].decode().startswith("UNAUTHENTICATED: session ended")
    assert s.streams == 0


async def test_a_guest_gone_inside_a_frame_is_not_counted_malformed(
    host: tuple[HostServer, codec.AioBalloonStub, str],
) -> None:
    server, stub, path = host
    conn = await connect(path, await negotiate(stub))
    conn[1].write(framing.frame(framing.MESSAGE, encode_chain(1, [(0, 9)]).SerializeToString())[:7])
    await conn[1].drain()
    conn[1].close()
    qs = server.queue_socket
    assert qs is not None
    await wait_for(lambda: not qs.connections, 5, "the connection's end")
    assert server.device.metrics.refusals["malformed"] == 0
    assert server.queue_socket is not None and not server.queue_socket.connections


def test_any_path_a_socket_may_have_is_taken(tmp_path: Path) -> None:
    # 107 bytes, the most sun_path holds, with a one-letter name.
    folder = Path("/tmp") / ("d" * (107 - len("/tmp/") - len("/s")))
    folder.mkdir(exist_ok=True)
    path = str(folder / "s")
    assert len(path) == 107
    try:
        sock, _ = listen_at(path, 8)
        sock.close()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        folder.rmdir()


async def test_bytes_that_are_no_hello_are_counted(
    host: tuple[HostServer, codec.AioBalloonStub, str],
) -> None:
    server, _, path = host
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(struct.pack("<I", 0xFFFFFFFF))
    assert await asyncio.wait_for(framing.read_frame(reader, 1024), 5) is None
    assert server.device.metrics.refusals["malformed"] == 1


@contextlib.asynccontextmanager
async def stopped_by_the_test(
    tmp_path: Path,
) -> AsyncIterator[tuple[HostServer, codec.AioBalloonStub, str]]:
    """A host the test stops itself (the host fixture stops its own at the end)."""
    path = str(tmp_path / "q.sock")
    server = HostServer(HostConfig(listen="127.0.0.1:0", queue_socket=path, drain_seconds=0.1))
    channel = grpc.aio.insecure_channel(await server.start())
    try:
        yield server, codec.aio_stub(channel), path
    finally:
        await channel.close()
        await server.stop()


async def test_a_stopping_host_says_so(tmp_path: Path) -> None:
    async with stopped_by_the_test(tmp_path) as (server, stub, path):
        conn = await connect(path, await negotiate(stub))
        send(conn, encode_chain(1, [(0, 9)]))
        assert await answer(conn) is not None
        await server.stop()
        assert (await end_line(conn)) == "UNAVAILABLE: the host is stopping"


async def test_a_host_stopping_while_a_told_guest_lingers_says_nothing_more(
    tmp_path: Path,
) -> None:
    # The stream has ended with its status and the host waits for the guest to close
    # (its lingering close); the host stops in that wait: no second word, no error.
    errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    async with stopped_by_the_test(tmp_path) as (server, stub, path):
        session = await negotiate(stub)
        conn = await connect(path, session)
        await stub.Close(codec.encode_close(session), timeout=5)
        assert (await end_line(conn)).startswith("UNAUTHENTICATED: session ended")
        await server.stop()  # the guest never closed its side (stop waits for its task)
        await asyncio.sleep(0)  # its task's end reaches the loop's handler
        assert errors == []
