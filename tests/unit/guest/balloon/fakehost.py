"""An in-process transport to a real BalloonDevice, with the faults a network has.

The driver's fault paths run against the real device logic (checks, fencing,
totals) without processes: ``hold`` makes the host sit on chains (a slow or
stalled device thread), ``release`` lets it get to them, ``lose_answers`` drops
its answers on the floor, ``break_streams`` breaks the open stream, ``down``
makes negotiation fail, and ``restart`` swaps in a fresh device (a host restart).

The host's memory model (issue 23) is the fake's own, not the device's: with
``host_memory`` it accepts a guest's offer, records each touch batch
(``touched``), answers it with a Notice when ``settle_touches`` (``delay_us``
each), takes touches carried in chains unless ``touches_in_chain`` is off (an
older host; ``carried`` counts them), ``notice`` sends one of its own, and
``oom_kill`` ends the streams as the host's OOM killer does (ABORTED).
"""

from __future__ import annotations

import asyncio
import dataclasses

from guest.balloon.transport import NegotiationRefused, TransportError
from host.balloon import handle_pages, take_stats
from host.device import BalloonDevice
from host.figures import guest_figures, host_figures
from host.memory.sim import SimBackend
from host.sessions import NegotiationError, Session
from virtqueue.codec import (
    Accepted,
    ChainMsg,
    GuestMsg,
    HostFigures,
    Negotiation,
    NoticeMsg,
    PagesMsg,
    StatsMsg,
    TouchedMsg,
    UsedMsg,
)


class FakeStream:
    def __init__(self, host: FakeHost, session: Session) -> None:
        self.host = host
        self.session = session
        self.inbox: asyncio.Queue[UsedMsg | NoticeMsg | Exception | None] = asyncio.Queue()
        self.dead = False
        self.write_gate: asyncio.Event | None = None

    async def opened(self) -> None:
        if self.host.refuse_streams:
            raise TransportError("UNAUTHENTICATED: no such session")

    async def write(self, msg: GuestMsg) -> None:
        if self.write_gate is not None:
            await self.write_gate.wait()
        if self.dead:
            raise TransportError("UNAVAILABLE: stream broken")
        if isinstance(msg, StatsMsg):
            take_stats(self.session, msg)
            return
        if isinstance(msg, PagesMsg):
            used = handle_pages(self.session, msg)
            if not self.dead and not self.host.lose_answers:
                self.inbox.put_nowait(used)
            return
        if isinstance(msg, TouchedMsg):
            self.host.device.handle_touched(self.session, msg.pfns, msg.counts)
            self.host.touched.append(msg)
            if self.host.settle_touches and msg.seq:
                self.inbox.put_nowait(NoticeMsg([], msg.seq, self.host.delay_us, 0, 0))
            return
        self.host.chains_received += 1
        if isinstance(msg, ChainMsg) and msg.touched is not None:
            # Applied before the chain, as host/queue.py does (Chain.touched).
            t = msg.touched
            self.host.device.handle_touched(self.session, t.pfns, t.counts)
            self.host.touched.append(t)
            self.host.carried += 1
        if self.host.hold:
            self.host.held.append((self, msg))
        else:
            self.process(msg)

    def process(self, msg: ChainMsg) -> None:
        used = self.host.device.handle_report(self.session, msg.id, msg.pfns, msg.orders)
        if used is not None and not self.dead and not self.host.lose_answers:
            self.inbox.put_nowait(used)

    async def read(self) -> UsedMsg | NoticeMsg | None:
        item = await self.inbox.get()
        if isinstance(item, Exception):
            raise item
        return item

    def cancel(self) -> None:
        self.dead = True
        self.inbox.put_nowait(None)

    def break_(self) -> None:
        self.dead = True
        self.inbox.put_nowait(TransportError("UNAVAILABLE: connection reset"))


class FakeHost:
    def __init__(self, **device_kw: object) -> None:
        self.device_kw = device_kw
        self.device = BalloonDevice(SimBackend(), **device_kw)  # type: ignore[arg-type]
        self.hold = False
        self.lose_answers = False
        self.down = False
        # Streams the host will not take (opened() fails), as another host's socket.
        self.refuse_streams = False
        self.held: list[tuple[FakeStream, ChainMsg]] = []
        self.streams: list[FakeStream] = []
        self.negotiations: list[Negotiation] = []
        self.chains_received = 0
        # The host's memory model (see the module's doc).
        self.host_memory = False
        self.settle_touches = True
        self.delay_us = 0
        self.touched: list[TouchedMsg] = []
        # Chain.touched: False answers as a host older than the field does.
        self.touches_in_chain = True
        self.carried = 0  # touch batches that came in chains
        self.backend_name: str | None = None  # answer as this backend (the device is sim)

    # ---- controls -----------------------------------------------------------------

    def release(self) -> None:
        held, self.held = self.held, []
        for stream, msg in held:
            stream.process(msg)

    def break_streams(self) -> None:
        for s in self.streams:
            if not s.dead:
                s.break_()

    def restart(self) -> None:
        self.break_streams()
        self.held = []
        self.device = BalloonDevice(SimBackend(), **self.device_kw)  # type: ignore[arg-type]

    def notice(self, n: NoticeMsg) -> None:
        for s in self.streams:
            if not s.dead:
                s.inbox.put_nowait(n)

    def oom_kill(self, badness: str = "oom_badness 100 pages: 90 resident, 10 swapped") -> None:
        for s in self.streams:
            if not s.dead:
                s.dead = True
                why = f"ABORTED: killed by the host's OOM killer ({badness})"
                s.inbox.put_nowait(TransportError(why))

    # ---- Transport ----------------------------------------------------------------

    async def negotiate(self, n: Negotiation, timeout: float) -> Accepted:
        await asyncio.sleep(0)
        if self.down:
            raise TransportError("UNAVAILABLE: host down")
        self.negotiations.append(n)
        try:
            acc = self.device.open_session(n)
        except NegotiationError as e:
            raise NegotiationRefused(f"INVALID_ARGUMENT: {e}") from None
        return dataclasses.replace(
            acc,
            host_memory=self.host_memory and n.host_memory,
            touches_in_chain=self.touches_in_chain and acc.touches_in_chain,
            backend=self.backend_name or acc.backend,
        )

    def open_stream(self, session: str) -> FakeStream:
        stream = FakeStream(self, self.device.table.session(session))
        self.streams.append(stream)
        return stream

    async def stats(self, session: str, timeout: float) -> HostFigures:
        if self.down:
            raise TransportError("UNAVAILABLE: host down")
        s = self.device.table.sessions.get(session)
        return host_figures(self.device, guest_figures(s) if s is not None else None)

    async def close_session(self, session: str, timeout: float) -> None:
        self.device.table.end(session, "closed by the guest")

    async def aclose(self) -> None:
        return None
