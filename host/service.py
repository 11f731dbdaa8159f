"""The gRPC servicer: who is calling, decode, hand to the device, encode. Kept thin.

Who the caller is comes from its client certificate (mutual TLS) or, without
TLS, from a per-guest token (``--tokens``); with neither the host checks no
identity (plain text on loopback, the default). Errors reach clients as a gRPC
status with one plain line: never a host path, never an exception's text.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import IO, NoReturn, TypeVar

import grpc

from host.device import BalloonDevice
from host.figures import guest_figures, host_figures, own_figures
from host.peers import AuthThrottle, peer_address
from host.sessions import (
    LimitReached,
    NegotiationError,
    NotPermitted,
    Session,
    SessionError,
    SessionInUse,
    SessionKilled,
)
from pagehint.tls import peer_identity
from virtqueue import codec

TOKEN_KEY = "x-pagehint-token"
ADMIN_ID = "admin"  # the --tokens entry whose holder may read every guest's figures

Context = codec.Context
R = TypeVar("R")


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort returned")


_STATUS_OF: list[tuple[type[Exception], grpc.StatusCode]] = [
    (NotPermitted, grpc.StatusCode.PERMISSION_DENIED),
    (SessionInUse, grpc.StatusCode.ALREADY_EXISTS),
    (LimitReached, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NegotiationError, grpc.StatusCode.INVALID_ARGUMENT),
]


def _same(given: object, want: str) -> bool:
    """Constant-time token comparison that any header value (even non-ASCII) survives."""
    return hmac.compare_digest(str(given).encode("utf-8", "replace"), want.encode())


def _digest(token: object) -> bytes:
    return hashlib.sha256(str(token).encode("utf-8", "replace")).digest()


def _is_loopback(peer: str) -> bool:
    # gRPC writes IPv6 peers URL-encoded: "ipv6:%5B::1%5D:port".
    return peer.startswith(("ipv4:127.", "ipv6:[::1]", "ipv6:%5B::1%5D"))


class BalloonService:
    def __init__(
        self,
        device: BalloonDevice,
        latency: float = 0.0,
        tls: bool = False,
        tokens: Mapping[str, str] | None = None,
        auth_penalty_max: float = 10.0,
    ) -> None:
        self.device = device
        self.latency = latency
        self.tls = tls
        self.tokens = dict(tokens or {})
        # Failed tokens slow their client's address down (host/peers.py).
        self.auth = AuthThrottle(auth_penalty_max)
        # Every known token, hashed: is a token no guest's at all (a guess)?
        self._known = {_digest(t) for t in self.tokens.values()}
        # --chain-log: the host's own per-chain record, for checking guests' timelines.
        self.chain_log: IO[str] | None = None
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    # ---- who is calling ---------------------------------------------------------------

    async def _identity(self, context: Context, guest_id: str) -> str | None:
        """The identity the caller proved (None: the host checks none). An admin
        identity reads figures and is no guest (roles apart): it may not negotiate."""
        if self.tls:
            peer = peer_identity(context)
            if peer is None:  # cannot happen with client auth required; refuse anyway
                await _abort(
                    context, grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required"
                )
            if peer[1]:
                await self._admin_as_guest(context, f"admin certificate {peer[0]!r}", guest_id)
            return peer[0]
        if self.tokens:
            address = peer_address(str(context.peer() or ""))
            await self._penalty(address)
            given = dict(context.invocation_metadata() or ()).get(TOKEN_KEY, "")
            want = self.tokens.get(guest_id)
            if want is None or not _same(given, want):
                self.device.refuse("bad_token", f"negotiation as {guest_id!r} with a bad token")
                # The failing answer waits out the penalty it earned.
                await asyncio.sleep(self.auth.failed(address))
                await _abort(context, grpc.StatusCode.UNAUTHENTICATED, "bad or missing guest token")
            if guest_id == ADMIN_ID:
                await self._admin_as_guest(context, "the admin token", guest_id)
            return guest_id
        return None

    async def _admin_as_guest(self, context: Context, who: str, guest_id: str) -> NoReturn:
        self.device.refuse("admin_as_guest", f"{who} tried to negotiate as guest {guest_id!r}")
        await _abort(
            context,
            grpc.StatusCode.PERMISSION_DENIED,
            "an admin identity reads figures; it may not negotiate as a guest",
        )

    async def _penalty(self, address: str) -> None:
        """Hold a call from an address penalised for failed tokens until its penalty
        ends; then its token is checked like any other.

        Every token is checked, a right one included, so a guesser sharing an
        address with honest guests (NAT, a node's SNAT) delays them by at most
        --auth-penalty-max, never shuts them out (turning calls away unchecked did,
        for as long as the guessing went on). Every answer waits, the right one
        too: the time of an answer tells a guesser nothing, and an impatient one
        that cancels learns nothing. A guesser gets at most --max-calls-per-peer
        guesses per penalty (528 per 10 s by default; a token is 16+ characters).
        """
        wait = self.auth.wait(address)
        if wait <= 0:
            return
        self.auth.throttled += 1
        self.device.problems.note(
            "auth_penalty",
            f"{address or 'a client'}: a call held {wait:.1f} s after "
            f"{self.auth.failures_of(address)} failed tokens from its address",
        )
        await asyncio.sleep(wait)

    async def _may_read_all(self, context: Context) -> bool:
        """Every guest's figures: an admin certificate or token, or a local caller of
        a host that checks no identity (the lab commands, the metrics endpoint)."""
        if self.tls:
            peer = peer_identity(context)
            return peer is not None and peer[1]
        if self.tokens:
            address = peer_address(str(context.peer() or ""))
            await self._penalty(address)
            given = dict(context.invocation_metadata() or ()).get(TOKEN_KEY, "")
            admin = self.tokens.get(ADMIN_ID)
            if admin is not None and _same(given, admin):
                return True
            if given and _digest(given) not in self._known:  # a guess at the admin token
                self.device.refuse("bad_token", f"{address}: host-wide figures with a bad token")
                self.auth.failed(address)
            return False
        return _is_loopback(str(context.peer() or ""))

    async def _malformed(self, context: Context, rpc: str, e: codec.Undecodable) -> NoReturn:
        """A request that does not decode: the client's fault, not a host bug. Counted,
        one line in the host's log at most (rate-limited), INVALID_ARGUMENT to the client."""
        self.device.refuse("malformed", f"{rpc} from {context.peer() or 'a client'}: {e}")
        await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))

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
            await _abort(context, grpc.StatusCode.INTERNAL, "internal error in the host")

    # ---- the RPCs ------------------------------------------------------------------------

    async def Negotiate(
        self, request: codec.NegotiateRequest | codec.Malformed, context: Context
    ) -> codec.NegotiateReply:
        return await self._guarded(context, lambda: self._negotiate(request, context), "Negotiate")

    async def _negotiate(
        self, request: codec.NegotiateRequest | codec.Malformed, context: Context
    ) -> codec.NegotiateReply:
        n = codec.decode_negotiate(request)
        identity = await self._identity(context, n.guest_id)
        try:
            s, fence = self.device.table.negotiate(
                n.guest_id,
                n.ram_bytes,
                n.page_size,
                n.features,
                n.poison_val,
                n.capacity,
                n.previous_session,
                identity,
                peer=peer_address(str(context.peer() or "")),
                host_memory=n.host_memory,
            )
        except NegotiationError as e:
            code = next(c for cls, c in _STATUS_OF if isinstance(e, cls))
            await _abort(context, code, str(e))
        return codec.encode_accepted(self.device.accepted(s, fence))

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
            await _abort(context, _session_status(e), str(e))
        session.streams += 1
        task = asyncio.current_task()
        if task is not None:
            session.stream_tasks.add(task)
        try:
            answers = (
                self._with_notices(session, request_iterator)
                if session.host_memory
                else self._answers(session, request_iterator)
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
            await _abort(context, grpc.StatusCode.INTERNAL, "internal error in the host")
        finally:
            session.streams -= 1
            if task is not None:
                session.stream_tasks.discard(task)
        if session.killed:
            # The host's OOM killer ended it: the guest ends too (it does not reconnect).
            await _abort(context, grpc.StatusCode.ABORTED, session.killed)
        if session.ended:
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, "session ended; negotiate again")

    async def _answers(
        self,
        session: Session,
        request_iterator: AsyncIterator[codec.GuestMessage | codec.Malformed],
    ) -> AsyncIterator[codec.Used]:
        """The guest's messages answered in turn (a guest without the host's memory
        model: the host speaks only when spoken to)."""
        if self.latency:
            async for msg in request_iterator:
                if session.ended:
                    break
                used = await self._delayed_message(session, msg)
                if used is not None:
                    yield used
            return
        # The hot path: one message handled start to finish without yielding to the
        # loop (no task or future per chain).
        one = self._one_message
        async for msg in request_iterator:
            if session.ended:
                break
            used = one(session, msg)
            if used is not None:
                yield used

    async def _with_notices(
        self,
        session: Session,
        request_iterator: AsyncIterator[codec.GuestMessage | codec.Malformed],
    ) -> AsyncIterator[codec.Used]:
        """A stream of a guest that follows the host's memory model: the host also
        speaks unasked (a Notice of evictions other guests' touches caused), so the
        guest's messages are read by a task of their own and both kinds of answer
        are written from here, in order. The reader waits while its answers are
        unwritten (at most a queue's worth: a guest that does not read is not
        buffered without end)."""
        answers: asyncio.Queue[codec.Used | BaseException | None] = asyncio.Queue(
            maxsize=max(1, session.queue_size)
        )
        wake = asyncio.Event()
        session.wakes.add(wake)
        reader = asyncio.create_task(self._read_into(session, request_iterator, answers, wake))
        try:
            while True:
                # Answers first: a queued answer may carry an eviction id older than
                # the one taken below, and the guest must hear them in order (its
                # acknowledgement of an id covers every earlier one).
                while not answers.empty():
                    item = answers.get_nowait()
                    if item is None:
                        return
                    if isinstance(item, BaseException):
                        raise item
                    yield item
                evicted, evict_id = session.ram.take_evicted()
                if evicted:
                    yield codec.encode_notice(codec.NoticeMsg(evicted, 0, 0, 0, 0, evict_id))
                if session.ended:
                    return
                await wake.wait()
                wake.clear()
        finally:
            session.wakes.discard(wake)
            reader.cancel()

    async def _read_into(
        self,
        session: Session,
        request_iterator: AsyncIterator[codec.GuestMessage | codec.Malformed],
        answers: asyncio.Queue[codec.Used | BaseException | None],
        wake: asyncio.Event,
    ) -> None:
        """The guest's messages, answered into ``answers``; None when the guest is
        done, the exception when a message does not decode (the stream ends)."""
        end: codec.Used | BaseException | None = None
        try:
            async for msg in request_iterator:
                if session.ended:
                    break
                if self.latency:
                    used = await self._delayed_message(session, msg)
                else:
                    used = self._one_message(session, msg)
                if used is not None:
                    await answers.put(used)
                    wake.set()
        except codec.Undecodable as e:
            end = e
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the writer raises it: one path for every failure
            end = e
        await answers.put(end)
        wake.set()

    def _one_message(
        self, session: Session, msg: codec.GuestMessage | codec.Malformed
    ) -> codec.Used | None:
        """Handle one guest message; the encoded answer, or None (nothing to answer).
        codec.Undecodable for a message that did not decode."""
        decoded = codec.decode_guest_message(msg)
        if decoded is None:
            # No chain id to answer: count it and go on (the stream survives).
            self.device.refuse("malformed", f"guest {session.guest_id}: empty message")
            return None
        if isinstance(decoded, codec.TouchedMsg):
            notice = self.device.answer_touched(
                session, decoded.pfns, decoded.counts, decoded.seq, decoded.evict_ack
            )
            session.last_seen = time.monotonic()
            return None if notice is None else codec.encode_notice(notice)
        used = self.device.handle_report(session, decoded.id, decoded.pfns, decoded.orders)
        if used is None:
            # A fence ended the session while this chain waited: it was cancelled
            # before any discard, and its guest has moved on.
            return None
        session.last_seen = time.monotonic()
        if self.chain_log is not None:
            self._log_chain(session.guest_id, used)
        return codec.encode_used(used)

    async def _delayed_message(
        self, session: Session, msg: codec.GuestMessage | codec.Malformed
    ) -> codec.Used | None:
        """--latency: a slow host. The chain is held for the delay first (the drain
        on SIGTERM waits for such chains: ``inflight``/``idle``)."""
        if isinstance(codec.decode_guest_message(msg), codec.ChainMsg):
            self.inflight += 1
            self.idle.clear()
            try:
                await asyncio.sleep(self.latency)
            finally:
                self.inflight -= 1
                if self.inflight == 0:
                    self.idle.set()
        return self._one_message(session, msg)

    def _log_chain(self, guest_id: str, used: codec.UsedMsg) -> None:
        assert self.chain_log is not None
        record = {
            "wall": round(time.time(), 4),
            "guest": guest_id,
            "chain": used.id,
            "status": codec.STATUS_NAMES.get(used.status, str(used.status)),
            "resident_bytes": used.resident_bytes,
        }
        try:
            self.chain_log.write(json.dumps(record) + "\n")
        except OSError as e:
            # A record, not the service: keep serving, say so once, stop writing.
            self.device.log(f"--chain-log: cannot write ({e.strerror}); no more chain lines")
            self.chain_log = None

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
                await _abort(context, _session_status(e), str(e))
            self_guest = guest_figures(s)
            if self_only:
                return codec.encode_host_stats(own_figures(self.device, self_guest))
        figures = host_figures(self.device, self_guest)
        if not await self._may_read_all(context):
            if self_guest is None:
                await _abort(
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
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, "unknown or expired session")
        self.device.table.end(token, "closed by the guest")
        return codec.close_reply()


def _session_status(e: SessionError) -> grpc.StatusCode:
    """ABORTED for a session the OOM killer ended (the guest stops, exit 3), else
    UNAUTHENTICATED (the guest negotiates again)."""
    return (
        grpc.StatusCode.ABORTED if isinstance(e, SessionKilled) else grpc.StatusCode.UNAUTHENTICATED
    )
