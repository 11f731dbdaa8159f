"""Connection and fencing: one session at a time, and a clean hand-over between them.

When the stream breaks the chains in flight are *stranded*: the host may or may
not have used them, and may still be about to. The connection reconnects with
jittered exponential backoff and negotiates a new session that names the old
one; the host answers only once the old session can no longer discard anything
(it fences it) and says which of its chains it finished. Only then are the
stranded chains settled — DONE ones as reported, the rest as never discarded —
and their blocks may go back. A host that restarted has no record of the old
session, which is just as final: the process that could have discarded is gone.
A host that is alive but stalled does not answer the negotiation either, so the
stranded blocks stay isolated for as long as it takes, as in the kernel.

Some answers end the guest instead (``fatal``, then ``on_fatal``): a session it
must not use (its RAM file refused: guest/ram.py), its guest id taken by
another client for good (``_id_held``), or its session ended by the host's OOM
killer (``OomKilled``: the stream ends ABORTED, "killed by the host's OOM
killer ..."; the guest exits with status 3, and does not come back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from guest.balloon.transport import NegotiationRefused, Stream, Transport, TransportError
from guest.balloon.window import ChainWindow
from pagehint.errors import UsageError
from pagehint.ratelog import RateLimitedLog
from pagehint.schema import GuestSummary
from virtqueue import features as F
from virtqueue.codec import Accepted, ConfigMsg, Negotiation, NoticeMsg
from virtqueue.contract import OOM_KILLED

log = logging.getLogger(__name__)

NEGOTIATE_TIMEOUT = 5.0
# host/device.py STALE_AFTER: a session with no stream and no call for this long
# may be replaced by a new negotiation for its guest id. (The guest cannot import
# the host; a test holds the two to each other.)
HOST_STALE_AFTER = 5.0
# The host's --session-timeout before a session has told us (its default).
HOST_SESSION_TIMEOUT = 30.0
ID_HELD_EVERY = 10.0  # seconds between lines saying the guest id is still held
# How the host ends a refusal that means "another process has this guest's id now;
# stop" (host/device.py _check_takeover): final at once, where a refusal because of
# a live session is retried (a crashed predecessor's session goes stale).
GIVES_WAY = "this one gives way"


def id_in_use(why: str) -> bool:
    """The host refused a negotiation because another session holds the guest id
    (host/device.py SessionInUse, sent as ALREADY_EXISTS)."""
    return why.startswith("ALREADY_EXISTS")


class GuestIdLost(UsageError):
    """Another client holds this guest's id for good: the guest cannot go on."""


class OomKilled(UsageError):
    """The host's OOM killer chose this guest: its session and memory are gone.
    One line and exit status 3 (``exit_status``), after the summary (oom_killed)."""

    exit_status = 3

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.summary: GuestSummary | None = None  # the guest's, once written


def oom_killed(why: str) -> bool:
    """The stream ended because the host's OOM killer ended the session (ABORTED)."""
    return why.startswith(f"ABORTED: {OOM_KILLED}")


class SessionUnusable(Exception):
    """The host accepted a session this guest cannot use (too small a capacity, ...)."""


@dataclass
class Backoff:
    """Exponential backoff with "equal jitter": half the delay fixed, half random, so
    many guests that lost the same host do not come back in lockstep."""

    minimum: float
    maximum: float
    rng: random.Random
    attempt: int = 0

    def next(self) -> float:
        cap = min(self.maximum, self.minimum * (2.0**self.attempt))
        self.attempt += 1
        return cap / 2 + self.rng.uniform(0, cap / 2)

    def reset(self) -> None:
        self.attempt = 0


async def open_stream(transport: Transport, session: str) -> Stream:
    """The session's stream once the host has taken it. One it will not take (a
    queue socket of another host, or of none) is a failed connect, retried with
    backoff: its session is closed on the host, so the guest id is free again."""
    stream = transport.open_stream(session)
    try:
        await stream.opened()
    except TransportError:
        stream.cancel()
        with contextlib.suppress(TransportError):
            await transport.close_session(session, timeout=2.0)
        raise
    return stream


class Connection:
    def __init__(
        self,
        transport: Transport,
        window: ChainWindow,
        *,
        negotiation: Callable[[str], Negotiation],
        accept: Callable[[Accepted], None],
        address: str,
        backoff: Backoff,
    ) -> None:
        """``negotiation(previous_session)`` makes the offer; ``accept`` checks the
        host's answer (may raise SessionUnusable) and adopts it."""
        self.transport = transport
        self.window = window
        self._negotiation = negotiation
        self._accept = accept  # checks the session (may raise SessionUnusable) and adopts it
        self.address = address
        self.backoff = backoff
        self.accepted: Accepted | None = None
        self.stream: Stream | None = None
        self.connected = asyncio.Event()
        self.broken = asyncio.Event()
        self.connects = 0
        self.fences = 0
        self.closing = False
        self._reader: asyncio.Task[None] | None = None
        # A long outage or an incompatible host: one line per kind per 10 s.
        self.problems = RateLimitedLog(log)
        self.guest_id = ""
        # Since when negotiations have been refused with the id held by another session,
        # and when that was last said (once per ID_HELD_EVERY, nothing counted between).
        self.held_since: float | None = None
        self._held_said: float | None = None
        # Why the guest must stop (set once; keep_connected then gives up).
        self.fatal: UsageError | None = None
        self.on_fatal: list[Callable[[UsageError], None]] = []
        # The host's Notices (only with host_memory negotiated): the driver's.
        self.on_notice: Callable[[NoticeMsg], None] = lambda _n: None
        # The host's balloon target (only with balloon negotiated): the driver's.
        self.on_config: Callable[[ConfigMsg], None] = lambda _c: None

    @property
    def session(self) -> str:
        return self.accepted.session if self.accepted is not None else ""

    async def connect(self) -> None:
        """Negotiate a session (fencing the previous one) and open its stream."""
        previous = self.session
        n = self._negotiation(previous)
        self.guest_id = n.guest_id
        acc = await self.transport.negotiate(n, timeout=NEGOTIATE_TIMEOUT)
        self.held_since = self._held_said = None
        if previous:
            # The old session is over on the host: settle its stranded chains.
            settled = self.window.fence(previous, acc.fence)
            self.fences += 1
            if settled:
                known = acc.fence is not None and acc.fence.known
                log.info(
                    f"fenced the previous session: {settled} stranded chain(s) settled "
                    f"({'host kept its record' if known else 'host has no record of it'})"
                )
        try:
            self._accept(acc)
        except SessionUnusable as e:
            await self._close_unused(acc.session)
            raise NegotiationRefused(str(e)) from None
        except UsageError:
            # Final (its RAM file refused, say): leave no session of ours open either.
            await self._close_unused(acc.session)
            raise
        # Named by the next negotiation whatever becomes of its stream (one that did
        # not open was closed on the host, which keeps the record a fence reads).
        self.accepted = acc
        self.stream = await open_stream(self.transport, acc.session)
        self.broken = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(
            self._read_used(self.stream), name="balloon-used"
        )
        self.connects += 1
        self.backoff.reset()
        self.connected.set()
        log.info(
            f"connected to host {self.address}: session {acc.session[:8]}…, backend {acc.backend}, "
            f"features {F.describe(acc.features)}, queue {acc.queue_size}, "
            f"chain capacity {acc.max_chain_ranges}"
        )

    async def _close_unused(self, session: str) -> None:
        with contextlib.suppress(TransportError):
            await self.transport.close_session(session, timeout=2.0)

    def lost(self, stream: Stream, why: str) -> None:
        """The stream broke (read or write): stop using it; the keeper reconnects."""
        if stream is not self.stream:
            return
        self.stream = None
        self.connected.clear()
        self.broken.set()
        stream.cancel()
        if not self.closing:
            stranded = len(self.window.unanswered_sessions())
            log.info(
                f"host connection lost: {why}"
                + ("; chains in flight stay isolated until the host is fenced" if stranded else "")
            )

    async def _read_used(self, stream: Stream) -> None:
        why = "stream ended"
        try:
            while True:
                used = await stream.read()
                if used is None:
                    break
                if isinstance(used, NoticeMsg):
                    self.on_notice(used)
                elif isinstance(used, ConfigMsg):
                    self.on_config(used)
                else:
                    self.window.answer(used)
        except TransportError as e:
            why = str(e)
            if oom_killed(why) and stream is self.stream:
                self.killed(why)
        except asyncio.CancelledError:
            why = "driver stopping"
            raise
        finally:
            self.lost(stream, why)

    async def keep_connected(self) -> None:
        """Reconnect whenever the stream breaks, until closing."""
        while not self.closing:
            await self.broken.wait()
            while not self.closing:
                delay = self.backoff.next()
                await asyncio.sleep(delay)
                try:
                    await asyncio.wait_for(self.connect(), NEGOTIATE_TIMEOUT + 1)
                    break
                except UsageError as e:
                    self.give_up(e)
                    return
                except (TransportError, TimeoutError, OSError) as e:
                    why = "no answer" if isinstance(e, TimeoutError) else str(e)
                    if oom_killed(why):  # the session it names was the OOM killer's
                        self.killed(why)
                        return
                    if id_in_use(why):
                        if self._id_held(why):
                            return
                        continue
                    self.held_since = self._held_said = None
                    self.problems.note(
                        f"reconnect:{why}", f"reconnect to {self.address} failed ({why}); retrying"
                    )

    def killed(self, why: str) -> None:
        """The host's OOM killer ended our session: no reconnecting (the host would
        only kill again what it could not hold), and no "connection lost" line."""
        self.closing = True
        # The host ended the session and freed its memory: no chain of it can still
        # be discarded, as final as a fence from a host with no record of it.
        self.window.fence(self.session, None)
        self.give_up(OomKilled(why.removeprefix("ABORTED: ")))

    def give_up(self, e: UsageError) -> None:
        """The guest cannot go on with this host: say so to whoever runs it."""
        if self.fatal is None:
            self.fatal = e
            for cb in self.on_fatal:
                cb(e)

    def id_wait_bound(self) -> float:
        """How long a reconnecting guest waits while its id is held by another session.

        Its own stray session (a negotiation the host answered but whose answer
        was lost) holds the id until the host finds it stale (HOST_STALE_AFTER
        silent) or expires it (its session timeout, checked every second). Twice
        the longer of the two is past both: a holder still there is another client.
        """
        acc = self.accepted
        timeout = acc.session_timeout_ms / 1000 if acc and acc.session_timeout_ms else 0.0
        return 2 * max(timeout or HOST_SESSION_TIMEOUT, HOST_STALE_AFTER)

    def _id_held(self, why: str) -> bool:
        """A reconnect was refused with the guest id in use: True if another client holds
        it for good (the guest gives up), False if it may still go (retry)."""
        now = time.monotonic()
        if self.held_since is None:
            self.held_since = now
        bound, waited = self.id_wait_bound(), now - self.held_since
        # The host's own words for a takeover are final at once; any other refusal
        # as in use, once it has outlasted the bound.
        if why.endswith(GIVES_WAY) or waited >= bound:
            still = "" if why.endswith(GIVES_WAY) else f"; still refused after {waited:.0f}s"
            self.give_up(
                GuestIdLost(
                    f"guest id {self.guest_id!r} was taken by another client (host "
                    f"{self.address}: {why}{still}); exiting"
                )
            )
            return True
        self._say_held(
            f"guest id {self.guest_id!r} is held on host {self.address} by a session this "
            "guest did not open (did another client take it while this guest was away?): "
            f"retrying for up to {bound:g}s, then exiting (host: {why})",
        )
        return False

    def _say_held(self, line: str) -> None:
        # Its own throttle, not ``problems``: a wait of a few seconds is one line,
        # without a "N more like this" line after it.
        now = time.monotonic()
        if self._held_said is None or now - self._held_said >= ID_HELD_EVERY:
            self._held_said = now
            log.info(line)

    def note_id_held_at_start(self, why: str, limit: float) -> None:
        """The first negotiation was refused with the id in use: say why the guest
        waits (rate-limited). Usually this guest's previous run, killed without
        closing its session: the host keeps it until it has been silent a while."""
        self._say_held(
            f"guest id {self.guest_id!r} still has a session on host {self.address} that "
            "this process did not open (an earlier run of this guest, killed without "
            "closing it?): waiting for the host to let it go, which it does "
            f"{HOST_STALE_AFTER:g}s after that session's last call once its stream is "
            "closed (else after the host's --session-timeout); up to --connect-timeout "
            f"{limit:g}s (host: {why})",
        )

    async def close(self) -> None:
        self.closing = True
        if self.accepted is not None and self.connected.is_set():
            with contextlib.suppress(TransportError):
                await self.transport.close_session(self.accepted.session, timeout=0.5)
        if self.stream is not None:
            self.stream.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self.connected.clear()
        await self.transport.aclose()
