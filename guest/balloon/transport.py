"""The seam under the driver: how it reaches the host.

The driver never touches gRPC itself; it gets a ``Transport`` (by default
``GrpcTransport``) and talks in the codec's domain types. Tests inject their
own transport to drive every fault path — a stream that breaks mid-chain, a
refusal, a late answer, a fence — without processes, the way httpx's
MockTransport serves its clients.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

import grpc

from pagehint.tls import TlsConfig
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


class TransportError(Exception):
    """The host could not be reached, or the stream or call broke; the message says why."""


class NegotiationRefused(TransportError):
    """The host answered the negotiation with a refusal (retrying as is will not help)."""


class Stream(Protocol):
    """One open reporting stream: chains and touch batches out, used answers in."""

    async def opened(self) -> None:
        """Wait until the host has taken the stream, where the transport can tell
        (TransportError if it will not); at once where it cannot."""
        ...

    async def write(self, msg: GuestMsg) -> None: ...

    async def read(self) -> UsedMsg | NoticeMsg | ConfigMsg | None:
        """The next answer (or a Notice: host_memory); None when the host ended the
        stream cleanly."""
        ...

    def cancel(self) -> None: ...


class Transport(Protocol):
    async def negotiate(self, n: Negotiation, timeout: float) -> Accepted: ...

    def open_stream(self, session: str) -> Stream: ...

    async def stats(self, session: str, timeout: float) -> HostFigures: ...

    async def close_session(self, session: str, timeout: float) -> None: ...

    async def aclose(self) -> None: ...


def why(e: BaseException) -> str:
    """One line for a gRPC error or any other exception."""
    if isinstance(e, grpc.aio.AioRpcError):
        detail = (e.details() or "").splitlines()[0] if e.details() else ""
        return f"{e.code().name}: {detail}" if detail else e.code().name
    return str(e) or type(e).__name__


# A refused negotiation's statuses that are final (NegotiationRefused), any transport's.
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
}  # not final, so retried: RESOURCE_EXHAUSTED (a session may free up) and
#   ALREADY_EXISTS (a crashed predecessor's session goes stale within seconds)


class GrpcStream:
    def __init__(self, call: grpc.aio.StreamStreamCall[codec.GuestMessage, codec.Used]) -> None:
        self._call = call

    async def opened(self) -> None:
        # gRPC says nothing before the first answer: a stream the host will not
        # take ends at the first read, and the connection reconnects then.
        return

    async def write(self, msg: GuestMsg) -> None:
        wire = codec.encode_guest_msg(msg)
        try:
            await self._call.write(wire)
        except (
            grpc.aio.AioRpcError,
            grpc.aio.UsageError,
            ConnectionError,
            asyncio.InvalidStateError,  # "RPC already finished": the stream is gone
        ) as e:
            raise TransportError(why(e)) from None

    async def read(self) -> UsedMsg | NoticeMsg | ConfigMsg | None:
        try:
            msg = await self._call.read()
        except grpc.aio.AioRpcError as e:
            raise TransportError(why(e)) from None
        if msg is grpc.aio.EOF:
            return None
        return codec.decode_used(cast(codec.Used, msg))

    def cancel(self) -> None:
        self._call.cancel()


class GrpcTransport:
    """The gRPC virtqueue. Each negotiation opens a fresh channel (a reconnect).

    A negotiation fails at once when the host is not there (no wait_for_ready):
    the connection's own jittered backoff decides when to try again, not gRPC's
    channel backoff, which grows to minutes and made guests come back late.
    """

    def __init__(
        self, address: str, tls: TlsConfig | None = None, token: str | None = None
    ) -> None:
        self.address = address
        self.tls = tls
        self._metadata = ((codec.TOKEN_KEY, token),) if token else ()
        self._channel: grpc.aio.Channel | None = None
        self._stub: codec.AioBalloonStub | None = None

    def _open(self) -> grpc.aio.Channel:
        # A channel of its own subchannels: with gRPC's global pool a new channel
        # reuses the old one's subchannel, still backing off from the outage, and
        # fails at once for seconds after the host is back (guests came back late).
        options = [
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if self.tls is not None:
            return grpc.aio.secure_channel(
                self.address, self.tls.channel_credentials(), options=options
            )
        return grpc.aio.insecure_channel(self.address, options=options)

    async def negotiate(self, n: Negotiation, timeout: float) -> Accepted:
        await self.aclose()
        self._channel = self._open()
        self._stub = stub = codec.aio_stub(self._channel)
        try:
            reply = await stub.Negotiate(
                codec.encode_negotiate(n), timeout=timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as e:
            if e.code() in REFUSALS:
                raise NegotiationRefused(why(e)) from None
            raise TransportError(why(e)) from None
        return codec.decode_accepted(reply)

    def open_stream(self, session: str) -> Stream:
        if self._stub is None:
            raise TransportError("not connected")
        return GrpcStream(self._stub.Reporting(metadata=((codec.SESSION_KEY, session),)))

    async def stats(self, session: str, timeout: float) -> HostFigures:
        if self._stub is None:
            raise TransportError("not connected")
        try:
            reply = await self._stub.Stats(
                # Its own figures only: a guest's poll must not cost the host O(guests).
                codec.encode_stats_request(session, self_only=True),
                timeout=timeout,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as e:
            raise TransportError(why(e)) from None
        return codec.decode_host_stats(reply)

    async def close_session(self, session: str, timeout: float) -> None:
        if self._stub is None:
            return
        try:
            await self._stub.Close(codec.encode_close(session), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise TransportError(why(e)) from None

    async def aclose(self) -> None:
        if self._channel is not None:
            channel, self._channel, self._stub = self._channel, None, None
            await channel.close()
