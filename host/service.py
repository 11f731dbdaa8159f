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

from host import hints
from host.balloon import set_target
from host.balloon import state as balloon_state
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
from pagehint.config import HostConfig
from pagehint.units import format_size
from virtqueue import codec
from virtqueue.contract import PAGE_SIZE, guest_id_problem

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
            session = self.device.table.session(token)
        except SessionError as e:
            self.device.refuse("unknown_session")
            await abort(context, session_status(e), str(e))
        task = asyncio.current_task()
        session.stream_opened(task)
        try:
            answers = (
                self.queue.with_notices(session, request_iterator)
                if session.host_memory or session.balloon is not None
                else self.queue.answers(session, request_iterator)
            )
            async for used in answers:
                yield used
        except asyncio.CancelledError:
            # Ending the session (fenced, expired, replaced) cancels this task. gRPC
            # sends no status for a cancelled handler, so the guest would wait on a
            # silent stream: tell it, and it reconnects.
            if not session.ended or context.done():
                raise
        except (grpc.aio.AbortError, GeneratorExit):
            raise
        except codec.Undecodable as e:
            # The stream's framing held but a message did not decode: end the stream
            # (INVALID_ARGUMENT). Its chains in flight are the guest's to fence.
            await self._malformed(context, f"Reporting (guest {session.guest_id})", e)
        except Exception:
            self.device.problems.note("internal", "internal error:\n" + traceback.format_exc())
            await abort(context, grpc.StatusCode.INTERNAL, "internal error in the host")
        finally:
            session.stream_closed(task)
        if session.killed:
            # The host's OOM killer ended it: the guest ends too (it does not reconnect).
            await abort(context, grpc.StatusCode.ABORTED, session.killed)
        if session.ended:
            await abort(context, grpc.StatusCode.UNAUTHENTICATED, "session ended; negotiate again")

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
        return await self._guarded(context, lambda: self._balloon(request, context), "Balloon")

    async def _balloon(
        self, request: codec.BalloonRequest | codec.Malformed, context: Context
    ) -> codec.BalloonStatus:
        """Set a guest's target and read its balloon (admin only where identities are
        checked: a guest must not shrink its neighbours)."""
        guest_id, target = codec.decode_balloon_request(request)
        if not await self.gate.may_read_all(context):
            await abort(
                context, grpc.StatusCode.PERMISSION_DENIED, "the balloon needs an admin identity"
            )
        if guest_id_problem(guest_id) is not None:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "guest_id: not a guest id")
        table = self.device.table
        s = table.sessions.get(table.by_guest.get(guest_id, ""))
        if s is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no session of guest {guest_id!r}")
        if target is not None:
            if set_target(table, guest_id, target) is None:
                await abort(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"guest {guest_id!r} has no balloon (an older guest)",
                )
            assert s.balloon is not None
            told = s.balloon.target_pages * PAGE_SIZE
            log.info(f"guest {guest_id}: balloon target {format_size(told)}")
        return codec.encode_balloon_status(balloon_state(s))

    async def Hint(
        self, request: codec.HintRequest | codec.Malformed, context: Context
    ) -> codec.HintStatus:
        return await self._guarded(context, lambda: self._hint(request, context), "Hint")

    async def _hint(
        self, request: codec.HintRequest | codec.Malformed, context: Context
    ) -> codec.HintStatus:
        """Start, stop or read a guest's free page hinting (admin only where
        identities are checked), as Firecracker's /balloon/hinting API."""
        guest_id, action, ack = codec.decode_hint_request(request)
        if not await self.gate.may_read_all(context):
            await abort(
                context, grpc.StatusCode.PERMISSION_DENIED, "hinting needs an admin identity"
            )
        if guest_id_problem(guest_id) is not None:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "guest_id: not a guest id")
        s = hints.live(self.device.table, guest_id)
        if s is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no session of guest {guest_id!r}")
        if not hints.hinting(s):
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"guest {guest_id!r} has no free page hinting (host without --free-page-hint, "
                "or an older guest)",
            )
        if action == codec.HINT_START:
            hints.start(s, ack)
            log.info(f"guest {guest_id}: free page hinting run {hints.state(s).host_cmd}")
        elif action == codec.HINT_STOP:
            hints.stop(s)
            log.info(f"guest {guest_id}: free page hinting done")
        return codec.encode_hint_status(hints.state(s))


def session_status(e: SessionError) -> grpc.StatusCode:
    """ABORTED for a session the OOM killer ended (the guest stops, exit 3), else
    UNAUTHENTICATED (the guest negotiates again)."""
    return (
        grpc.StatusCode.ABORTED if isinstance(e, SessionKilled) else grpc.StatusCode.UNAUTHENTICATED
    )
