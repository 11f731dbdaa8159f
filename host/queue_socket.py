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
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator

from host.queue import ReportingQueue
from host.stream import StreamEnd, reporting
from pagehint.errors import UsageError
from virtqueue import codec, framing

log = logging.getLogger(__name__)

# As gRPC's --max-receive-message-length for the stream (host/server.py): a chain of
# 512 ranges packs to about 6 KiB.
MAX_FRAME_BYTES = 64 * 1024
# Answers buffered for a guest that does not read, before the host waits for it
# (asyncio's own high-water mark for a stream writer).
WRITE_HIGH_WATER = 64 * 1024
_parse = codec.lenient(codec.GuestMessage)


def claim_path(path: str) -> None:
    """Make ``path`` free for a new socket: a socket left by a host that was killed
    is removed; anything else there, or a live host's socket, is the user's error
    (never removed: a path named by mistake must not cost the user a file)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise UsageError(f"--queue-socket {path}: cannot use: {e.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError(f"--queue-socket {path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: a killed host's
        return
    except OSError as e:
        raise UsageError(f"--queue-socket {path}: cannot use: {e.strerror}") from None
    finally:
        probe.close()
    raise UsageError(f"--queue-socket {path}: another process is listening there")


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

    async def start(self) -> None:
        claim_path(self.path)
        try:
            self.server = await asyncio.start_unix_server(
                self._serve, self.path, limit=MAX_FRAME_BYTES + 16
            )
            os.chmod(self.path, 0o600)
        except OSError as e:
            await self.stop()
            raise UsageError(f"--queue-socket {self.path}: cannot listen: {e.strerror}") from None

    async def stop(self) -> None:
        """Stop listening and end every connection (their sessions are ended, or are
        about to be, by the caller); the socket file goes."""
        if self.server is not None:
            self.server.close()
            self.server = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        for task in list(self.connections):
            task.cancel()
        if self.connections:
            await asyncio.wait(self.connections, timeout=2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        device = self.queue.device
        if len(self.connections) >= self.max_connections:
            device.metrics.turned_away["queue_socket_connections"] += 1
            device.problems.note(
                "connections",
                f"--queue-socket: a connection refused: {self.max_connections} open "
                "(--max-connections)",
            )
            writer.close()
            return
        self.connections.add(task)
        try:
            await self._stream(reader, writer)
        except asyncio.CancelledError:
            pass  # the host is stopping
        finally:
            self.connections.discard(task)
            writer.close()

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await asyncio.wait_for(
                framing.read_frame(reader, MAX_FRAME_BYTES), self.hello_timeout
            )
        except (TimeoutError, framing.FrameError, OSError):
            return  # never said who it is: nothing to answer
        if first is None:
            return
        kind, token = first
        if kind != framing.HELLO:
            self.queue.device.refuse("malformed", "--queue-socket: a stream without a hello")
            _end(writer, "INVALID_ARGUMENT: the first frame must say the session")
            return
        try:
            async for used in reporting(
                self.queue,
                token.decode("ascii", "replace"),
                self._requests(reader),
                "the queue socket",
                writer.is_closing,
            ):
                if writer.is_closing():
                    return
                writer.write(framing.frame(framing.USED, used.SerializeToString()))
                if writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                    await writer.drain()
        except StreamEnd as e:
            _end(writer, str(e))
        except (ConnectionError, OSError):
            return  # the guest went away mid-answer

    async def _requests(
        self, reader: asyncio.StreamReader
    ) -> AsyncIterator[codec.GuestMessage | codec.Malformed]:
        """The guest's messages; ends when the guest closes its side (or the socket
        breaks: the guest is gone). A frame that breaks the framing is a message
        that does not decode: the stream ends INVALID_ARGUMENT."""
        while True:
            try:
                got = await framing.read_frame(reader, MAX_FRAME_BYTES)
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


def _end(writer: asyncio.StreamWriter, line: str) -> None:
    if not writer.is_closing():
        writer.write(framing.frame(framing.END, line.encode("utf-8", "replace")))
