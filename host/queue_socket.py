"""The reporting virtqueue on a Unix socket, for guests on the host's own machine
(``pagehint host --queue-socket PATH``; the frames: virtqueue/framing.py).

Why beside gRPC: a chain's round trip over grpc.aio on loopback is ~0.25 ms
before the host does anything (HTTP/2 framing and gRPC's poller thread on each
side), and at reporting order 0 a pass is hundreds of chains answered one at a
time, so the stack's floor stretches the pass (issue 27). The same protobufs
framed on a Unix socket cross in ~0.1 ms. Negotiation, stats and close stay
on gRPC; a stream here is admitted by its session's token, which only a
negotiation hands out, so every check, limit and quota of the negotiation
still applies, and the stream's life is the gRPC stream's (host/stream.py).

The socket is the host user's only (mode 0600); who may reach it is the file
system's to say. Connections are capped (``--max-connections``), and one that
has not said which session it is within ``--handshake-timeout`` is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator

from host.queue import ReportingQueue
from host.stream import StreamEnd, reporting
from pagehint.errors import UsageError
from virtqueue import codec, framing
from virtqueue.contract import MAX_GUEST_MESSAGE_BYTES

log = logging.getLogger(__name__)

# As gRPC's --max-receive-message-length for the stream (host/server.py): a chain of
# 512 ranges packs to about 6 KiB.
MAX_FRAME_BYTES = MAX_GUEST_MESSAGE_BYTES
# Answers buffered for a guest that does not read, before the host waits for it
# (asyncio's own high-water mark for a stream writer).
WRITE_HIGH_WATER = 64 * 1024
# The listen backlog: guests that connect in one instant (a fleet booting) wait in
# it; at most what the kernel allows by default (net.core.somaxconn, 4096 since 5.4).
MAX_BACKLOG = 4096
# How long the check for a live host at the path waits for an answer.
PROBE_SECONDS = 1.0
# How long a stream that has ended waits for its guest to close (see _linger).
LINGER_SECONDS = 2.0
_parse = codec.lenient(codec.GuestMessage)


def stale(path: str) -> bool:
    """A socket at ``path`` that nobody listens on: a killed host's. Anything else
    there, or a live socket, is the user's error (never removed: a path named by
    mistake must not cost the user a file)."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise UsageError(f"--queue-socket {path}: cannot use: {e.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError(f"--queue-socket {path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_SECONDS)  # a listener with a full backlog answers late
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return True
    except OSError as e:
        raise UsageError(f"--queue-socket {path}: cannot use: {e.strerror or e}") from None
    finally:
        probe.close()
    raise UsageError(f"--queue-socket {path}: another process is listening there")


def listen_at(path: str, backlog: int) -> tuple[socket.socket, tuple[int, int]]:
    """A listening socket at ``path``, the host user's only, and its (device,
    inode). The socket is made 0600 before it is bound (fchmod on a socket sets
    the mode its file is created with, net/unix/af_unix.c unix_bind), so there is
    no instant at which others may connect; binding fails if anything is at the
    path, and a socket there is removed first only if nobody listens on it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.fchmod(sock.fileno(), 0o600)
        try:
            sock.bind(path)
        except OSError as e:
            if e.errno != errno.EADDRINUSE or not stale(path):
                raise
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            log.info(f"--queue-socket {path}: took over a socket nobody listened on")
            sock.bind(path)  # EADDRINUSE again: another host took it meanwhile
        sock.listen(backlog)
        st = os.stat(path)
    except OSError as e:
        sock.close()
        raise UsageError(f"--queue-socket {path}: cannot listen: {e.strerror or e}") from None
    except BaseException:
        sock.close()
        raise
    return sock, (st.st_dev, st.st_ino)


def share(max_connections: int) -> tuple[int, int]:
    """The connection cap split between gRPC and the queue socket (grpc, socket):
    a guest on the socket holds one connection on each, so half and half, and
    together never more than --max-connections (the descriptor budget,
    host/limits.py)."""
    socket_cap = max(1, max_connections // 2)
    return max(1, max_connections - socket_cap), socket_cap


class QueueSocket:
    def __init__(
        self,
        path: str,
        queue: ReportingQueue,
        max_connections: int,
        hello_timeout: float,
    ) -> None:
        self.path = path
        self.queue = queue
        self.max_connections = max_connections
        self.hello_timeout = hello_timeout
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[asyncio.Task[None]] = set()
        self._inode: tuple[int, int] | None = None

    async def start(self) -> None:
        sock, self._inode = listen_at(self.path, min(self.max_connections, MAX_BACKLOG))
        try:
            self.server = await asyncio.start_unix_server(
                self._serve, sock=sock, limit=MAX_FRAME_BYTES + 16
            )
        except OSError as e:
            sock.close()
            self._unlink_ours()
            raise UsageError(f"--queue-socket {self.path}: cannot listen: {e.strerror}") from None

    async def stop(self) -> None:
        """Stop listening and end every connection (their sessions are ended, or are
        about to be, by the caller); the socket file goes if it is still ours."""
        if self.server is not None:
            self.server.close()
            self.server = None
            self._unlink_ours()
        for task in list(self.connections):
            task.cancel()
        if self.connections:
            await asyncio.wait(self.connections, timeout=2.0)

    def _unlink_ours(self) -> None:
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except OSError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        device = self.queue.device
        if len(self.connections) >= self.max_connections:
            device.metrics.queue_socket_refused += 1
            device.problems.note(
                "queue-socket-connections",
                f"--queue-socket: connections refused: {self.max_connections} open (its "
                "share of --max-connections)",
            )
            writer.transport.abort()
            return
        self.connections.add(task)
        said = False
        try:
            said = await self._stream(reader, writer)
            if said:
                await _linger(reader, writer)
        except asyncio.CancelledError:
            # The host is stopping: say so unless the stream has had its last word (a
            # guest that reads gets it before the socket closes), and wait for nothing.
            if not said:
                _end(writer, "UNAVAILABLE: the host is stopping")
        finally:
            self.connections.discard(task)
            writer.close()

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one stream; whether the guest was answered (and is owed a lingering
        close: _linger)."""
        device = self.queue.device
        try:
            first = await asyncio.wait_for(
                framing.read_frame(reader, MAX_FRAME_BYTES), self.hello_timeout
            )
        except framing.FrameCut:
            return False  # gone before it said who it is
        except framing.FrameError as e:
            device.refuse("malformed", f"--queue-socket: before the hello: {e}")
            return False
        except (TimeoutError, OSError):
            return False  # never said who it is: nothing to answer
        if first is None:
            return False
        kind, payload = first
        if kind != framing.HELLO:
            device.refuse("malformed", "--queue-socket: a stream without a hello")
            _end(writer, "INVALID_ARGUMENT: the first frame must say the session")
            return True
        token = payload.decode("ascii", "replace")
        session = device.table.sessions.get(token)
        if session is not None and session.streams:
            # One stream per session on the socket, as a guest opens (a reconnect
            # negotiates a new session): a token cannot open streams without end.
            _end(writer, "RESOURCE_EXHAUSTED: the session has a stream open")
            return True
        if session is not None:
            writer.write(framing.frame(framing.READY, b""))

        async def pause() -> None:
            # Wait for a guest that does not read, inside the stream (reporting()).
            if writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                await writer.drain()

        try:
            async for used in reporting(
                self.queue, token, self._requests(reader), "the queue socket",
                writer.is_closing, pause,
            ):  # fmt: skip
                if writer.is_closing():
                    return False
                writer.write(framing.frame(framing.USED, used.SerializeToString()))
        except StreamEnd as e:
            _end(writer, str(e))
        except OSError:
            return False  # the guest went away mid-answer
        return True

    async def _requests(
        self, reader: asyncio.StreamReader
    ) -> AsyncIterator[codec.GuestMessage | codec.Malformed]:
        """The guest's messages; ends when the guest closes its side, or goes away
        (the socket breaks, or closes inside a frame). A frame that breaks the
        framing is a message that does not decode: the stream ends INVALID_ARGUMENT."""
        while True:
            try:
                got = await framing.read_frame(reader, MAX_FRAME_BYTES)
            except framing.FrameCut:
                return
            except framing.FrameError as e:
                yield codec.Malformed(f"a queue-socket frame ({e})")
                return
            except OSError:
                return
            if got is None:
                return
            kind, payload = got
            if kind != framing.MESSAGE:
                yield codec.Malformed(f"a queue-socket frame (kind {kind} from a guest)")
                return
            yield _parse(payload)


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close as a server that has said its last word does: shut the sending side
    (the guest reads the END, then EOF), then read what the guest had still sent,
    unused, until it closes (at most LINGER_SECONDS). Closed at once with that
    unread, the socket would reset, and a guest's reader raises the reset before
    it reads the END already in its buffer."""
    if writer.is_closing() or not writer.can_write_eof():
        return
    with contextlib.suppress(OSError):
        writer.write_eof()
    try:
        async with asyncio.timeout(LINGER_SECONDS):
            while await reader.read(MAX_FRAME_BYTES):
                pass
    except (TimeoutError, OSError):
        pass


def _end(writer: asyncio.StreamWriter, line: str) -> None:
    if not writer.is_closing():
        writer.write(framing.frame(framing.END, line.encode("utf-8", "replace")))
