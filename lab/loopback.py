"""A guest and a host in one process: the guest's Transport over a real host
device, with no network between them (as httpx ships ``MockTransport``).

``LoopbackTransport(device)`` is what ``BalloonDriver(..., transport=...)``
takes instead of gRPC. Everything past the wire is the host's own code: a
negotiation is ``BalloonDevice.open_session`` (the table's checks, fencing,
quotas, the host's memory model), a Reporting stream is the host's
``ReportingQueue`` fed the same protobuf messages gRPC would carry (checked,
discarded, answered in order; with the memory model, Notices of evictions), and
the answers are decoded as the gRPC transport decodes them. Refusals come back
as the gRPC transport raises them (NegotiationRefused when final, else
TransportError, both "STATUS: detail"). What it leaves out is the network:
no serialization cost on a socket, no deadlines, no TLS, no tokens.

Tests, benches and anyone who wants guest and host in one process use it::

    device = BalloonDevice(SimBackend())
    driver = BalloonDriver(cfg, mm, transport=LoopbackTransport(device))
    await driver.start()  # first: the policy registers against the host's answer
    runtime = GuestRuntime(cfg, device=driver, mm=mm)
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from guest.balloon.transport import REFUSALS, NegotiationRefused, Stream, TransportError
from host.device import BalloonDevice
from host.figures import guest_figures, own_figures
from host.queue import ReportingQueue
from host.service import status_of
from host.sessions import NegotiationError, SessionError, SessionKilled
from host.stream import StreamEnd, reporting, session_status
from virtqueue import codec
from virtqueue.codec import (
    Accepted,
    ConfigMsg,
    GuestMsg,
    HostFigures,
    Negotiation,
    NoticeMsg,
    UsedMsg,
)

T = TypeVar("T")
Answer = UsedMsg | NoticeMsg | ConfigMsg


def _as_host(fn: Callable[..., T], *args: object) -> T:
    """Run host code in a context of its own: its lines are the host's."""
    return contextvars.Context().run(fn, *args)


class LoopbackStream:
    """One Reporting stream: the guest's messages go through the host's queue as
    protobuf messages, and its answers come back decoded. Like a gRPC call, a
    stream to a session the host does not know opens, then ends at its first read."""

    def __init__(self, queue: ReportingQueue, token: str) -> None:
        self._to_host: asyncio.Queue[codec.GuestMessage | None] = asyncio.Queue()
        self._to_guest: asyncio.Queue[Answer | BaseException | None] = asyncio.Queue()
        self._closed = False
        # In a context of its own: the host's lines are the host's, not the guest's
        # whose task opened the stream (log_as).
        self._task = asyncio.get_running_loop().create_task(
            self._serve(queue, token), name="loopback-stream", context=contextvars.Context()
        )

    async def _requests(self) -> AsyncIterator[codec.GuestMessage | codec.Malformed]:
        while (msg := await self._to_host.get()) is not None:
            yield msg

    async def _serve(self, queue: ReportingQueue, token: str) -> None:
        """The host's side, as host/service.py's Reporting handler: the same
        session bookkeeping, the same ends."""
        end: BaseException | None = None
        try:
            async for used in reporting(queue, token, self._requests(), "loopback"):
                self._to_guest.put_nowait(codec.decode_used(used))
        except StreamEnd as e:
            end = TransportError(str(e))
        finally:
            self._to_guest.put_nowait(end)

    async def opened(self) -> None:
        return  # as gRPC's: an unknown session ends the stream at its first read

    async def write(self, msg: GuestMsg) -> None:
        if self._closed or self._task.done():
            raise TransportError("UNAVAILABLE: the stream is closed")
        self._to_host.put_nowait(codec.encode_guest_msg(msg))
        await asyncio.sleep(0)  # the host's turn, as a write to a socket would give it

    async def read(self) -> UsedMsg | NoticeMsg | ConfigMsg | None:
        item = await self._to_guest.get()
        if item is None or isinstance(item, BaseException):
            self._to_guest.put_nowait(item)  # an ended stream stays ended, as a call does
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        """The guest is done with the stream: the host sees it end."""
        if not self._closed:
            self._closed = True
            self._to_host.put_nowait(None)
            self._to_guest.put_nowait(None)

    async def ended(self) -> None:
        """Wait for the host's side to finish (it has already, or will soon, after
        ``cancel``); an error there was already told to the guest's reader."""
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({self._task})


class LoopbackTransport:
    """The guest's Transport to ``device`` in the same process (see the module's doc)."""

    def __init__(
        self, device: BalloonDevice, identity: str | None = None, latency: float = 0.0
    ) -> None:
        self.device = device
        self.queue = ReportingQueue(device, latency)
        # Who the guest proved to be (a certificate's name), if the host checks it.
        self.identity = identity
        self.streams: list[LoopbackStream] = []

    async def negotiate(self, n: Negotiation, timeout: float) -> Accepted:
        await asyncio.sleep(0)
        try:
            return _as_host(self.device.open_session, n, self.identity, "loopback")
        except NegotiationError as e:
            code = status_of(e)
            error = NegotiationRefused if code in REFUSALS else TransportError
            raise error(f"{code.name}: {e}") from None
        except SessionKilled as e:
            raise TransportError(f"ABORTED: {e}") from None

    def open_stream(self, session: str) -> Stream:
        stream = LoopbackStream(self.queue, session)
        self.streams.append(stream)
        return stream

    async def stats(self, session: str, timeout: float) -> HostFigures:
        await asyncio.sleep(0)
        try:
            s = self.device.table.session(session)
        except SessionError as e:
            raise TransportError(f"{session_status(e).name}: {e}") from None
        # Its own figures only, as the gRPC transport asks.
        return own_figures(self.device, guest_figures(s))

    async def close_session(self, session: str, timeout: float) -> None:
        await asyncio.sleep(0)
        if session not in self.device.table.sessions:
            raise TransportError("UNAUTHENTICATED: unknown or expired session")
        _as_host(self.device.table.end, session, "closed by the guest")

    async def aclose(self) -> None:
        for stream in self.streams:
            stream.cancel()
        for stream in self.streams:
            await stream.ended()
        self.streams.clear()
