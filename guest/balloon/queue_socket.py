"""The guest's side of the host's queue socket (``--queue-socket``; the frames:
virtqueue/framing.py, the host's side: host/queue_socket.py).

``QueueSocketTransport`` negotiates, polls and closes over gRPC as the gRPC
transport does, and carries each Reporting stream on the Unix socket: the same
messages, the same ends ("STATUS: one line"), so the connection above cannot
tell them apart — a host that is gone is a stream that breaks, and the guest
fences on its next negotiation as it does over gRPC.
"""

from __future__ import annotations

import asyncio

from google.protobuf.message import DecodeError

from guest.balloon.transport import GrpcTransport, Stream, TransportError
from virtqueue import codec, framing
from virtqueue.codec import (
    Accepted,
    ConfigMsg,
    GuestMsg,
    HostFigures,
    Negotiation,
    NoticeMsg,
    UsedMsg,
)

# The most a host's answer may be: gRPC's default receive limit, which the gRPC
# transport takes too (a Notice of evictions is the biggest answer).
MAX_ANSWER_BYTES = 4 * 1024 * 1024
# How long the host has to answer the hello: as long as a negotiation
# (connection.py's NEGOTIATE_TIMEOUT), which the host answered just before.
OPEN_SECONDS = 5.0


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(path: str) -> Conn:
    try:
        return await asyncio.open_unix_connection(path, limit=MAX_ANSWER_BYTES + 16)
    except OSError as e:
        raise TransportError(f"UNAVAILABLE: --queue-socket {path}: {e.strerror or e}") from None


class SocketStream:
    """One Reporting stream on the queue socket; it connects at once."""

    def __init__(self, path: str, session: str) -> None:
        self.path = path
        self._session = session
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ended: TransportError | None = None
        self._connected = asyncio.ensure_future(self._connect())
        # Its failure is raised to whichever of read and write waits first; retrieved
        # here too, for a stream cancelled before either did.
        self._connected.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _connect(self) -> None:
        reader, writer = await connect(self.path)
        writer.write(framing.frame(framing.HELLO, self._session.encode("ascii", "replace")))
        self._reader, self._writer = reader, writer

    async def _ready(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._ended is not None:
            raise self._ended
        try:
            await asyncio.shield(self._connected)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._ended is None or (task is not None and task.cancelling()):
                raise  # this task's own cancellation
            raise self._ended from None  # the stream was cancelled while connecting
        assert self._reader is not None and self._writer is not None
        return self._reader, self._writer

    async def opened(self) -> None:
        """The host's READY: the hello named a session of its own. Anything else is
        TransportError naming the socket: an END (no such session: another host's
        socket?), another frame (not a pagehint host's socket), or silence."""
        try:
            kind, _ = await asyncio.wait_for(self._next_frame(), OPEN_SECONDS)
        except TimeoutError:
            raise self._end(
                f"UNAVAILABLE: --queue-socket {self.path}: no answer to the hello in "
                f"{OPEN_SECONDS:g} s"
            ) from None
        except TransportError as e:
            # Named, so that a guest that gives up at start blames the socket, not
            # the host that negotiated.
            line = str(e)
            if line.startswith("UNAUTHENTICATED"):
                line += f" (--queue-socket {self.path}: the socket of another host?)"
            elif "--queue-socket" not in line:
                line += f" (--queue-socket {self.path})"
            self._ended = TransportError(line)
            raise self._ended from None
        if kind != framing.READY:
            raise self._end(
                f"INTERNAL: --queue-socket {self.path}: not a pagehint host's socket (it "
                f"answered the hello with a frame of kind {kind})"
            )

    async def write(self, msg: GuestMsg) -> None:
        _, writer = await self._ready()
        if writer.is_closing():
            raise TransportError("UNAVAILABLE: the queue socket is closed")
        try:
            writer.write(
                framing.frame(framing.MESSAGE, codec.encode_guest_msg(msg).SerializeToString())
            )
            await writer.drain()
        except OSError as e:
            raise TransportError(f"UNAVAILABLE: the queue socket: {e.strerror or e}") from None

    async def read(self) -> UsedMsg | NoticeMsg | ConfigMsg | None:
        kind, payload = await self._next_frame()
        while kind == framing.READY:  # when opened() was not waited for
            kind, payload = await self._next_frame()
        if kind != framing.USED:
            raise self._end(f"INTERNAL: a queue-socket frame of kind {kind} from the host")
        try:
            used = codec.Used.FromString(payload)
        except DecodeError:
            raise self._end("INTERNAL: an answer that does not decode") from None
        return codec.decode_used(used)

    async def _next_frame(self) -> tuple[int, bytes]:
        """The host's next frame but an END (raised, as the stream's end)."""
        reader, _ = await self._ready()
        try:
            got = await framing.read_frame(reader, MAX_ANSWER_BYTES)
        except framing.FrameError as e:
            raise self._end(f"INTERNAL: the host broke the queue socket's framing: {e}") from None
        except OSError as e:
            raise self._end(f"UNAVAILABLE: the queue socket: {e.strerror or e}") from None
        if got is None:
            # Closed without a status: the host went away (a clean end has one).
            raise self._end("UNAVAILABLE: the host closed the queue socket")
        if got[0] == framing.END:
            line = got[1].decode("utf-8", "replace").splitlines()
            raise self._end(line[0] if line else "UNKNOWN: the host ended the stream")
        return got

    def _end(self, line: str) -> TransportError:
        """The stream's end (the first one said: after cancel(), CANCELLED)."""
        if self._ended is None:
            self._ended = TransportError(line)
        self.cancel()
        return self._ended

    def cancel(self) -> None:
        if self._ended is None:
            self._ended = TransportError("CANCELLED: the stream was cancelled")
        if self._writer is not None:
            self._writer.close()
        elif not self._connected.done():
            self._connected.cancel()


class QueueSocketTransport:
    """gRPC for the control calls, the queue socket for the streams."""

    def __init__(self, control: GrpcTransport, path: str) -> None:
        self.control = control
        self.path = path

    async def negotiate(self, n: Negotiation, timeout: float) -> Accepted:
        # The socket is tried first: one that is not there fails the negotiation
        # (the guest retries, and gives up at start after --connect-timeout)
        # rather than opening a session whose stream breaks at once. Not held
        # open: a negotiation may wait longer (a host's auth penalty) than the
        # host waits for a connection to say its session.
        _, writer = await asyncio.wait_for(connect(self.path), timeout)
        writer.close()
        return await self.control.negotiate(n, timeout)

    def open_stream(self, session: str) -> Stream:
        return SocketStream(self.path, session)

    async def stats(self, session: str, timeout: float) -> HostFigures:
        return await self.control.stats(session, timeout)

    async def close_session(self, session: str, timeout: float) -> None:
        await self.control.close_session(session, timeout)

    async def aclose(self) -> None:
        await self.control.aclose()
