"""The gRPC servicer: who is calling (host/gatekeeper.py), decode, hand to the
session table or the device (a Reporting stream's messages: host/queue.py),
encode. Kept thin. Errors reach clients as a gRPC status with one plain line:
never a host path, never an exception's text.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import NoReturn, TypeVar

import grpc

from host.admin import AdminCalls
from host.device import BalloonDevice
from host.figures import guest_figures, host_figures, own_figures
from host.gatekeeper import Gatekeeper, abort
from host.peers import peer_address
from host.queue import ReportingQueue
from host.sessions import (
    LimitReached,
    NegotiationError,
    NotPermitted,
    SessionError,
    SessionInUse,
    SessionKilled,
    TooBig,
)
from host.stream import StreamEnd, reporting, session_status
from pagehint.config import HostConfig
from virtqueue import codec

Context = codec.Context
R = TypeVar("R")


log = logging.getLogger(__name__)


def status_of(e: NegotiationError) -> grpc.StatusCode:
    """The status a refused negotiation is answered with (any transport's)."""
    return next(c for cls, c in _STATUS_OF if isinstance(e, cls))


_STATUS_OF: list[tuple[type[Exception], grpc.StatusCode]] = [
    # Never fits this host, however long the guest waits: final, not retried.
    (TooBig, grpc.StatusCode.FAILED_PRECONDITION),
    (NotPermitted, grpc.StatusCode.PERMISSION_DENIED),
    (SessionInUse, grpc.StatusCode.ALREADY_EXISTS),
    (LimitReached, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NegotiationError, grpc.StatusCode.INVALID_ARGUMENT),
]


class BalloonService:
    def __init__(
        self,
        device: BalloonDevice,
        latency: float = 0.0,
        tls: bool = False,
        tokens: Mapping[str, str] | None = None,
        auth_penalty_max: float = HostConfig.auth_penalty_max,
    ) -> None:
        self.device = device
        self.gate = Gatekeeper(device, tls, tokens, auth_penalty_max)
        self.queue = ReportingQueue(device, latency)
        self.admin = AdminCalls(device, self.gate)

    async def _malformed(self, context: Context, rpc: str, e: codec.Undecodable) -> NoReturn:
        """A request that does not decode: the client's fault, not a host bug. Counted,
        one line in the host's log at most (rate-limited), INVALID_ARGUMENT to the client."""
        self.device.refuse("malformed", f"{rpc} from {context.peer() or 'a client'}: {e}")
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))

    async def _guarded(
        self, context: Context, body: Callable[[], Awaitable[R]], rpc: str = "a call"
    ) -> R:
        try:
            return await body()
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except codec.Undecodable as e:
            await self._malformed(context, rpc, e)
        except Exception:
            # A bug: the whole story goes to the host's log, one plain line to the client.
            self.device.problems.note("internal", "internal error:\n" + traceback.format_exc())
            await abort(context, grpc.StatusCode.INTERNAL, "internal error in the host")

    # ---- the RPCs ------------------------------------------------------------------------

    async def Negotiate(
        self, request: codec.NegotiateRequest | codec.Malformed, context: Context
    ) -> codec.NegotiateReply:
        return await self._guarded(context, lambda: self._negotiate(request, context), "Negotiate")

    async def _negotiate(
        self, request: codec.NegotiateRequest | codec.Malformed, context: Context
    ) -> codec.NegotiateReply:
        n = codec.decode_negotiate(request)
        identity = await self.gate.identity(context, n.guest_id)
        try:
            accepted = self.device.open_session(
                n, identity, peer=peer_address(str(context.peer() or ""))
            )
        except NegotiationError as e:
            await abort(context, status_of(e), str(e))
        except SessionKilled as e:
            await abort(context, grpc.StatusCode.ABORTED, str(e))
        return codec.encode_accepted(accepted)

    async def Reporting(
        self,
        request_iterator: AsyncIterator[codec.GuestMessage | codec.Malformed],
        context: Context,
    ) -> AsyncIterator[codec.Used]:
        token = dict(context.invocation_metadata() or ()).get(codec.SESSION_KEY, "")
        if not isinstance(token, str):  # a binary (-bin) header: no session of ours
            token = ""
        try:
            async for used in reporting(
                self.queue, token, request_iterator, str(context.peer() or ""), context.done
            ):
                yield used
        except StreamEnd as e:
            await abort(context, e.code, e.detail)

    async def Stats(
        self, request: codec.StatsRequest | codec.Malformed, context: Context
    ) -> codec.HostStats:
        return await self._guarded(context, lambda: self._stats(request, context), "Stats")

    async def _stats(
        self, request: codec.StatsRequest | codec.Malformed, context: Context
    ) -> codec.HostStats:
        token, self_only = codec.decode_stats_request(request)
        self_guest = None
        if token:
            try:
                s = self.device.table.session(token)
            except SessionError as e:
                await abort(context, session_status(e), str(e))
            self_guest = guest_figures(s)
            if self_only:
                return codec.encode_host_stats(own_figures(self.device, self_guest))
        figures = host_figures(self.device, self_guest)
        if not await self.gate.may_read_all(context):
            if self_guest is None:
                await abort(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    "host-wide figures need an admin identity; name your session",
                )
            figures = own_figures(self.device, self_guest)
        return codec.encode_host_stats(figures)

    async def Close(
        self, request: codec.CloseRequest | codec.Malformed, context: Context
    ) -> codec.CloseReply:
        return await self._guarded(context, lambda: self._close(request, context), "Close")

    async def _close(
        self, request: codec.CloseRequest | codec.Malformed, context: Context
    ) -> codec.CloseReply:
        token = codec.decode_close(request)
        if token not in self.device.table.sessions:
            await abort(context, grpc.StatusCode.UNAUTHENTICATED, "unknown or expired session")
        self.device.table.end(token, "closed by the guest")
        return codec.close_reply()

    async def Balloon(
        self, request: codec.BalloonRequest | codec.Malformed, context: Context
    ) -> codec.BalloonStatus:
        return await self._guarded(context, lambda: self.admin.balloon(request, context), "Balloon")

    async def Hint(
        self, request: codec.HintRequest | codec.Malformed, context: Context
    ) -> codec.HintStatus:
        return await self._guarded(context, lambda: self.admin.hint(request, context), "Hint")

    async def Snapshot(
        self, request: codec.SnapshotRequest | codec.Malformed, context: Context
    ) -> codec.SnapshotReport:
        return await self._guarded(
            context, lambda: self.admin.snapshot(request, context), "Snapshot"
        )
