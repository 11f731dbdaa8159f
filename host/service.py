"""The gRPC servicer: decode, hand to the device, encode. Kept thin on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc

from host.device import BalloonDevice, NegotiationError, SessionError
from virtqueue import codec


async def _abort(context: Any, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort returned")


class BalloonService(codec.BalloonServicerBase):  # type: ignore[misc]
    def __init__(self, device: BalloonDevice, latency: float = 0.0) -> None:
        self.device = device
        self.latency = latency
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def Negotiate(self, request: Any, context: Any) -> Any:
        n = codec.decode_negotiate(request)
        try:
            s, fence = self.device.negotiate(
                n.guest_id,
                n.ram_bytes,
                n.page_size,
                n.features,
                n.poison_val,
                n.capacity,
                n.previous_session,
            )
        except NegotiationError as e:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return codec.encode_accepted(self.device.accepted(s, fence))

    async def Reporting(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        token = dict(context.invocation_metadata() or ()).get(codec.SESSION_KEY, "")
        try:
            session = self.device.session(token)
        except SessionError as e:
            self.device.refuse("unknown_session")
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, str(e))
        session.streams += 1
        try:
            async for msg in request_iterator:
                if session.ended:
                    await _abort(context, grpc.StatusCode.UNAUTHENTICATED, "session ended")
                decoded = codec.decode_guest_message(msg)
                if decoded is None:
                    # No chain id to answer: count it and go on (the stream survives).
                    self.device.refuse("malformed", f"guest {session.guest_id}: empty message")
                    continue
                if isinstance(decoded, codec.TouchedMsg):
                    self.device.handle_touched(session, decoded.pfns, decoded.counts)
                    continue
                self.inflight += 1
                self.idle.clear()
                try:
                    if self.latency:
                        await asyncio.sleep(self.latency)
                    used = self.device.handle_report(
                        session, decoded.id, decoded.pfns, decoded.orders
                    )
                finally:
                    self.inflight -= 1
                    if self.inflight == 0:
                        self.idle.set()
                if used is None:
                    # A fence ended the session while this chain waited: it was
                    # cancelled before any discard, and its guest has moved on.
                    return
                self.device.touch_session(session)
                yield codec.encode_used(used)
        finally:
            session.streams -= 1
            self.device.touch_session(session)

    async def Stats(self, request: Any, context: Any) -> Any:
        token = codec.decode_stats_request(request)
        self_guest = None
        if token:
            try:
                s = self.device.session(token)
            except SessionError as e:
                await _abort(context, grpc.StatusCode.UNAUTHENTICATED, str(e))
            self_guest = self.device.figures(s)
        return codec.encode_host_stats(self.device.host_figures(self_guest))

    async def Close(self, request: Any, context: Any) -> Any:
        token = codec.decode_close(request)
        if token not in self.device.sessions:
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, "unknown or expired session")
        self.device.end(token, "closed by the guest")
        return codec.close_reply()
