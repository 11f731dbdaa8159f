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
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass

from guest.balloon.transport import NegotiationRefused, Stream, Transport, TransportError
from guest.balloon.window import ChainWindow
from pagehint.ratelog import RateLimitedLog
from virtqueue import features as F
from virtqueue.codec import Accepted, Negotiation

NEGOTIATE_TIMEOUT = 5.0


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


class Connection:
    def __init__(
        self,
        transport: Transport,
        window: ChainWindow,
        negotiation: Callable[[str], Negotiation],
        accept: Callable[[Accepted], None],
        log: Callable[[str], None],
        address: str,
        backoff: Backoff,
    ) -> None:
        self.transport = transport
        self.window = window
        self._negotiation = negotiation
        self._accept = accept  # checks the session (may raise SessionUnusable) and adopts it
        self.log = log
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

    @property
    def session(self) -> str:
        return self.accepted.session if self.accepted is not None else ""

    async def connect(self) -> None:
        """Negotiate a session (fencing the previous one) and open its stream."""
        previous = self.session
        acc = await self.transport.negotiate(self._negotiation(previous), timeout=NEGOTIATE_TIMEOUT)
        if previous:
            # The old session is over on the host: settle its stranded chains.
            settled = self.window.fence(previous, acc.fence)
            self.fences += 1
            if settled:
                known = acc.fence is not None and acc.fence.known
                self.log(
                    f"fenced the previous session: {settled} stranded chain(s) settled "
                    f"({'host kept its record' if known else 'host has no record of it'})"
                )
        try:
            self._accept(acc)
        except SessionUnusable as e:
            with contextlib.suppress(TransportError):
                await self.transport.close_session(acc.session, timeout=2.0)
            raise NegotiationRefused(str(e)) from None
        self.accepted = acc
        self.stream = self.transport.open_stream(acc.session)
        self.broken = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(
            self._read_used(self.stream), name="balloon-used"
        )
        self.connects += 1
        self.backoff.reset()
        self.connected.set()
        self.log(
            f"connected to host {self.address}: session {acc.session[:8]}…, backend {acc.backend}, "
            f"features {F.describe(acc.features)}, queue {acc.queue_size}, "
            f"chain capacity {acc.max_chain_ranges}"
        )

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
            self.log(
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
                self.window.answer(used)
        except TransportError as e:
            why = str(e)
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
                except (TransportError, TimeoutError, OSError) as e:
                    why = "no answer" if isinstance(e, TimeoutError) else str(e)
                    self.problems.note(
                        f"reconnect:{why}", f"reconnect to {self.address} failed ({why}); retrying"
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
