"""The virtio-balloon driver: the ReportingDevice the hinting policies see.

``report(batch)`` sends the batch as one chain and returns when the host has
used it (DONE); it raises ReportError when the host refused it, its discard
failed, or a fence showed it was never discarded — the policy then puts the
blocks back unreported. It never gives up on a chain by itself: a chain is
outstanding until it is answered or fenced (see window.py and connection.py),
however long the host takes. A report that is out for longer than
``stall_warning`` is logged once, and the age of the oldest is a metric.

At most queue-size chains are outstanding (the ring's size). The policies keep
their own capacity (the guest's --capacity); the host's answer gives the
minimum order, which raises the policy's, as page_reporting_dev_info's order
does. A host whose chains are too small for the policy's capacity is refused
at start, as virtio-balloon refuses to register page reporting with -ENOSPC
when its queue is smaller than PAGE_REPORTING_CAPACITY.

The host's memory model (issue 23): the guest always offers ``host_memory``;
a host with --host-memory accepts it and then sends Notices. The driver then
tracks touches on both backends, numbers each touch batch (``seq``), flushes
queued touches at once (a touch of a swapped frame is a fault the workload
waits for, not a figure that may lag), clears the "host has" bit of every
frame a Notice names evicted, and hands each Notice's delay to the workload
(``on_fault_delay``). With shm it also keeps the guest's own reads and writes
of its pages (guest/ram.py stamps) behind the Notice that settles the batch
that touched them (``gate``): the host copies a swapped chunk back before
that Notice, and a write into the hole before that would be overwritten.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import IO, Any

from guest.balloon.connection import (
    Backoff,
    Connection,
    SessionUnusable,
    id_in_use,
    oom_killed,
)
from guest.balloon.touches import TouchTracker
from guest.balloon.transport import (
    GrpcTransport,
    NegotiationRefused,
    Stream,
    Transport,
    TransportError,
)
from guest.balloon.window import ChainWindow, Outstanding
from guest.hinting.device import Block, ReportError
from guest.mm.buddy import BuddyAllocator
from guest.mm.constants import PAGE_SIZE
from pagehint.config import GuestConfig
from pagehint.errors import UsageError
from pagehint.logging import debug_of
from pagehint.schema import ReportRecord, encode
from pagehint.tls import unreachable_hint
from virtqueue import codec
from virtqueue import features as F
from virtqueue.codec import (
    Accepted,
    ChainMsg,
    GuestFigures,
    Negotiation,
    NoticeMsg,
    TouchedMsg,
    UsedMsg,
)

# Seconds between host-stats polls. host_resident_bytes between acknowledgements
# (touches raise it) matters to a timeline and to metrics; without either, a
# slow poll keeps hundreds of guests from costing the host a thousand calls a second.
STATS_PERIOD = 0.25
STATS_PERIOD_QUIET = 2.0
WATCH_PERIOD = 0.5  # seconds between looks at the oldest outstanding chain
STOP_RPC_SECONDS = 0.5  # each last call to the host when stopping (touches, stats, close)


def _columns(batch: Sequence[Block]) -> tuple[Sequence[int], Sequence[int]]:
    """(pfns, orders) of a batch, transposed in C (``zip(*batch)``)."""
    pfns, orders = zip(*batch, strict=True) if batch else ((), ())
    return pfns, orders


class BalloonDriver:
    def __init__(
        self,
        cfg: GuestConfig,
        mm: BuddyAllocator,
        log: Callable[[str], None],
        transport: Transport | None = None,
    ) -> None:
        assert cfg.host is not None or transport is not None
        self.cfg = cfg
        self.mm = mm
        self.log = log
        self._debug = debug_of(log)  # -v: a line per chain
        self.address = cfg.host or "(injected transport)"
        # What the policy needs; the host's answer may raise the order.
        self.min_order = cfg.hinting.order
        self.capacity = cfg.hinting.effective_capacity()
        self.window = ChainWindow()
        self.touches = TouchTracker(cfg.touch_batch)
        self.conn = Connection(
            transport if transport is not None else GrpcTransport(self.address, cfg.tls, cfg.token),
            self.window,
            self._negotiation,
            self._adopt,
            log,
            self.address,
            Backoff(cfg.reconnect_min, cfg.reconnect_max, random.Random()),
        )
        self._write_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
        self.host_figures: GuestFigures | None = None
        self.host_resident_bytes: int | None = None
        self.host_instance = ""
        # Pages the current host process acknowledged (DONE): what its totals can match.
        self.acked_pages_this_host = 0
        self.stalls = 0
        self._stopped = False
        # The last chain the host answered DONE (whose answer host_resident_bytes
        # holds), and an optional log of every chain (--reports): times are
        # seconds since ``epoch`` (the run's start).
        self.last_done: int | None = None
        self.last_done_resident: int | None = None
        self.report_log: IO[str] | None = None
        self.epoch = time.monotonic()
        # Called with each new session's acceptance (the shm RAM moves to a new file).
        self.on_session: list[Callable[[Accepted], None]] = []
        self._init_host_memory()
        self.conn.on_notice = self.on_notice
        self.conn.on_fatal.append(lambda _e: self._settle_event.set())

    def _init_host_memory(self) -> None:
        """The host's memory model's state (host_memory negotiated): see the module's doc."""
        self.host_memory = False
        self.host_memory_seen = False  # any session had it: the summary's fault figures
        self.gated = False  # shm with host_memory: accesses wait for their touches
        self.major_faults = 0  # summed over Notices: swap-ins the host did for us
        self.minor_faults = 0
        self.fault_delay_seconds = 0.0  # what Notices told the workload to wait
        self.on_fault_delay: list[Callable[[float], None]] = []
        self.on_settled: list[Callable[[int], None]] = []  # with the runs now settled
        # Before an eviction is acknowledged (shm): the RAM re-gates the accesses it
        # deferred, since their frames may now be among those evicted.
        self.on_evicted: list[Callable[[], None]] = []
        self._evict_ack = 0  # the Notice.evict_id to acknowledge with the next write
        self.touch_seq = 0  # the last touch batch sent in this session
        # (seq, runs_taken after it) of batches sent and not yet settled, in order.
        self._batches: deque[tuple[int, int]] = deque()
        self.settled_runs = 0  # touch runs the host has settled (TouchTracker counts)
        self._settle_event = asyncio.Event()
        self._flush_queued = False

    # ---- state for others ---------------------------------------------------------------

    @property
    def connected(self) -> asyncio.Event:
        return self.conn.connected

    @property
    def accepted(self) -> Accepted | None:
        return self.conn.accepted

    @property
    def connects(self) -> int:
        return self.conn.connects

    @property
    def touched_pages_sent(self) -> int:
        return self.touches.pages_sent

    def oldest_report_age(self) -> float:
        return self.window.oldest_age()

    @property
    def fatal(self) -> UsageError | None:
        """Why the guest must stop (its id taken, its RAM file refused), once known."""
        return self.conn.fatal

    # ---- ReportingDevice --------------------------------------------------------------

    async def report(self, batch: Sequence[Block]) -> None:
        if not self.conn.connected.is_set():
            raise ReportError(f"host {self.address} unavailable", reason="unavailable")
        async with self.window.slots:
            stream, session = self.conn.stream, self.conn.session
            if stream is None or not self.conn.connected.is_set():
                raise ReportError(f"host {self.address} unavailable", reason="unavailable")
            # Ascending pfn order: the host's check takes one pass over such a chain
            # (and the chain's record, the --reports line, shows what was sent).
            sent = sorted(batch)
            pfns, orders = _columns(sent)
            chain = self.window.open(sent, orders, session)
            try:
                try:
                    async with self._write_lock:
                        ticket = self.touches.runs_created
                        if self.touches.runs:
                            await self._send_touches(stream)
                        if self.gated and self.settled_runs < ticket:
                            # A block of this chain may be one whose check at its free
                            # still waits for its frames (guest/ram.py): the host must
                            # not discard it before they are back and read.
                            await self._settled_locked(ticket)
                        await stream.write(ChainMsg(chain.id, pfns, orders))
                except TransportError as e:
                    # It may or may not have reached the host: only a fence can tell.
                    self.conn.lost(stream, str(e))
                used = await chain.future
            finally:
                self.window.close(chain)
        if self.report_log is not None:
            self._log_report(chain, used)
        if self._debug is not None:
            self._debug_chain(chain, used)
        if used.status != codec.DONE:
            name = codec.STATUS_NAMES.get(used.status, str(used.status))
            why = f"{used.reason}: {used.detail}" if used.detail else used.reason
            raise ReportError(f"host answered {name} ({why})", reason=used.reason or name)
        # A fence that says DONE comes from the same host process (a restarted one
        # has no record), which counted the chain: so does this.
        self.acked_pages_this_host += chain.pages
        if used.reason != "fenced_done":
            # The host's figure right after this chain's discard: fresher than a poll.
            self.host_resident_bytes = used.resident_bytes
            self.last_done = chain.id
            self.last_done_resident = used.resident_bytes
        if used.discarded_pages:
            self.touches.discarded(batch)

    def _debug_chain(self, chain: Outstanding, used: UsedMsg) -> None:
        assert self._debug is not None
        ms = (time.monotonic() - chain.sent_at) * 1000
        why = f" ({used.reason})" if used.reason else ""
        self._debug(
            f"chain {chain.id}: {len(chain.batch)} ranges, {chain.pages} pages, "
            f"{codec.STATUS_NAMES.get(used.status, str(used.status))}{why} in {ms:.2f} ms"
        )

    def _log_report(self, chain: Outstanding, used: UsedMsg) -> None:
        assert self.report_log is not None
        fenced = used.reason in ("fenced_done", "cancelled")
        record: ReportRecord = {
            "chain": chain.id,
            "t_sent": round(chain.sent_at - self.epoch, 4),
            "t_answered": round(time.monotonic() - self.epoch, 4),
            "ranges": [[p, o] for p, o in chain.batch],
            "bytes": chain.pages * PAGE_SIZE,
            "status": codec.STATUS_NAMES.get(used.status, str(used.status)),
            "reason": used.reason,
            # Right after this chain's discard, as the host counted it (None when a
            # fence, not the host's answer, settled the chain).
            "host_resident_bytes": None if fenced else used.resident_bytes,
        }
        try:
            self.report_log.write(encode(record) + "\n")
        except OSError as e:
            # The log is a by-product: losing it must not lose the report (its
            # blocks still have to go back). Say so once and stop writing it.
            self.log(f"--reports: cannot write ({e.strerror}); no more report lines")
            self.report_log = None

    # ---- touches --------------------------------------------------------------------

    def on_alloc(self, pfn: int, order: int) -> None:
        """GuestMemory listener: the workload touches the block it allocated."""
        full = self.touches.on_alloc(pfn, order)
        if not self.conn.connected.is_set():
            return
        if full or (self.host_memory and self.touches.runs and not self._flush_queued):
            # With host_memory a touch is a fault the workload waits on: one flush
            # per loop turn that queued runs, not one per touch_flush_seconds.
            self._flush_queued = True
            self._spawn(self.flush_touches(), "balloon-touch-flush")

    async def flush_touches(self) -> None:
        self._flush_queued = False
        stream = self.conn.stream
        if stream is None or not (self.touches.runs or self._evict_ack):
            return
        async with self._write_lock:
            try:
                await self._send_touches(stream)
            except TransportError as e:
                self.conn.lost(stream, str(e))

    async def _send_touches(self, stream: Stream) -> None:
        while self.touches.runs or self._evict_ack:
            runs = self.touches.take()
            seq = 0
            if self.host_memory and runs:
                self.touch_seq = seq = self.touch_seq + 1
                self._batches.append((seq, self.touches.runs_taken))
            # The acknowledgement goes with the first write after the Notice, ahead
            # of any touch made since (the host moves the frames, then the touches
            # bring back what they need).
            ack, self._evict_ack = self._evict_ack, 0
            await stream.write(TouchedMsg([p for p, _ in runs], [n for _, n in runs], seq, ack))

    # ---- the host's memory model (host_memory) ----------------------------------------

    def on_notice(self, n: NoticeMsg) -> None:
        """The host evicted frames, and/or settled a touch batch (with its cost)."""
        if not self.host_memory:
            return  # a host must not send one unasked: nothing of it is believed
        self.touches.evicted(n.evicted)
        if n.evict_id:
            # Nothing of ours touches those frames from here on without a touch
            # reported after this acknowledgement (accesses run on this loop, in order).
            for regate in self.on_evicted:
                regate()
            self._evict_ack = max(self._evict_ack, n.evict_id)
            if not self._flush_queued and self.conn.connected.is_set():
                self._flush_queued = True
                self._spawn(self.flush_touches(), "balloon-evict-ack")
        self.major_faults += n.major
        self.minor_faults += n.minor
        if n.delay_us:
            delay = n.delay_us / 1e6
            self.fault_delay_seconds += delay
            for cb in self.on_fault_delay:
                cb(delay)
        if n.touch_seq:
            runs = self.settled_runs
            while self._batches and self._batches[0][0] <= n.touch_seq:
                runs = max(runs, self._batches.popleft()[1])
            self._settle_to(runs)

    def _settle_to(self, runs: int) -> None:
        if runs <= self.settled_runs:
            return
        self.settled_runs = runs
        for cb in self.on_settled:
            cb(runs)
        self._settle_event.set()
        self._settle_event = asyncio.Event()

    def gate(self, pfn: int, order: int) -> int:
        """Before the guest reads or writes a block (shm, host_memory): 0 when it may
        at once, else the ticket to wait for (``settled_runs >= ticket``). A frame of
        the block the host does not hold is touched (queued: the host restores it
        first); while any touch is unsettled every access waits, in order, so that
        one frame's accesses never pass each other."""
        self.on_alloc(pfn, order)
        t = self.touches
        return t.runs_created if t.runs_created > self.settled_runs else 0

    async def _settled_locked(self, ticket: int) -> None:
        """settled() for a caller that holds the write lock and sent every run."""
        while self.settled_runs < ticket and not self._stopped and self.conn.fatal is None:
            await self._settle_event.wait()

    async def settled(self, ticket: int) -> bool:
        """Wait until touch runs up to ``ticket`` are settled (sending what is
        queued); False if the driver stopped first."""
        while self.settled_runs < ticket:
            if self._stopped or self.conn.fatal is not None:
                return False
            event = self._settle_event
            if self.touches.runs:
                await self.flush_touches()
            if self.settled_runs < ticket:
                await event.wait()
        return True

    # ---- connection -----------------------------------------------------------------

    def _negotiation(self, previous_session: str) -> Negotiation:
        offered = F.mask(F.REPORTING)
        poison = 0
        if self.cfg.poison is not None:
            offered |= F.mask(F.PAGE_POISON)
            poison = self.cfg.poison
        return Negotiation(
            self.cfg.guest_id,
            self.mm.ram_bytes,
            PAGE_SIZE,
            offered,
            poison,
            self.capacity,
            previous_session,
            # Always offered: a host without --host-memory answers false (or, older,
            # does not know the field), and nothing changes.
            host_memory=True,
        )

    def _adopt(self, acc: Accepted) -> None:
        """Check a new session against what the policy needs, then take it on."""
        if not F.has(acc.features, F.REPORTING):
            raise SessionUnusable("the host did not accept VIRTIO_BALLOON_F_REPORTING")
        if acc.max_chain_ranges < self.capacity and self.cfg.hinting.policy != "none":
            raise SessionUnusable(
                f"the host takes at most {acc.max_chain_ranges} ranges per chain but the "
                f"{self.cfg.hinting.policy} policy reports {self.capacity}: start the guest "
                f"with --capacity {acc.max_chain_ranges} or the host with a larger "
                "--max-chain-ranges"
            )
        order = max(self.cfg.hinting.order, acc.min_order)
        if self.conn.connects and order != self.min_order:
            raise SessionUnusable(
                f"the host's minimum order {acc.min_order} differs from the running policy's "
                f"{self.min_order}"
            )
        self.min_order = order
        for cb in self.on_session:
            cb(acc)
        if acc.instance != self.host_instance:
            self.host_instance = acc.instance
            self.acked_pages_this_host = 0
        if not self.conn.connects:
            # The ring's size is fixed by the first session: stranded chains of a
            # later one still hold their slots until their fence settles them.
            self.window.resize(acc.queue_size)
        self.host_memory = acc.host_memory
        self.host_memory_seen = self.host_memory_seen or acc.host_memory
        self.gated = acc.host_memory and acc.backend == "shm"
        # A new session: the old one's unsettled batches never will be. Nothing of
        # ours is swapped in the new one (a new host file, our blocks copied into it:
        # guest/ram.py move_to), so every access waiting on them may go ahead.
        self._batches.clear()
        self.touch_seq = 0
        self._evict_ack = 0  # the old session's evictions are no business of the new
        self._settle_to(self.touches.runs_created)
        self.touches.reset(self.mm, enabled=acc.backend != "shm" or acc.host_memory)

    async def start(self) -> None:
        """Connect (trying with backoff for up to connect_timeout; a clear UsageError if
        that fails or the host refuses), then keep connected."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.connect_timeout
        while True:
            try:
                left = deadline - loop.time()
                await asyncio.wait_for(self.conn.connect(), max(0.1, left))
                break
            except NegotiationRefused as e:
                await self.conn.transport.aclose()
                raise UsageError(f"host {self.address} refused this guest: {e}") from None
            except (TransportError, TimeoutError, OSError) as e:
                delay = self.conn.backoff.next()
                why = "no answer" if isinstance(e, TimeoutError) else str(e)
                limit = self.cfg.connect_timeout
                if id_in_use(why):
                    self.conn.note_id_held_at_start(why, limit)
                if loop.time() + delay >= deadline:
                    await self.conn.transport.aclose()
                    if id_in_use(why):
                        raise UsageError(
                            f"guest id {self.cfg.guest_id!r} is still in use on host "
                            f"{self.address} after --connect-timeout {limit:g}s ({why})"
                        ) from None
                    if "UNAVAILABLE" in why:  # a probe tells whether TLS is the mismatch
                        tls = self.cfg.tls is not None
                        hint = await asyncio.to_thread(unreachable_hint, self.address, tls)
                        why += f" ({hint})"
                    raise UsageError(
                        f"cannot reach host {self.address} in {self.cfg.connect_timeout:g}s: {why}"
                    ) from None
                await asyncio.sleep(delay)
        self.conn.backoff.reset()
        self._spawn(self.conn.keep_connected(), "balloon-connection")
        self._spawn(self._poll_stats(), "balloon-stats")
        self._spawn(self._touch_flusher(), "balloon-touches")
        self._spawn(self._watch_stalls(), "balloon-stall-watch")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """A background task that stop() cancels and that is forgotten once done."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    async def _poll_stats(self) -> None:
        while True:
            await self.refresh_stats()
            await asyncio.sleep(self.stats_period())

    def stats_period(self) -> float:
        """Seconds to the next poll: fast while a timeline or metrics watch, slow
        otherwise, and always well inside the host's session timeout (the poll is
        what keeps an idle guest's session alive)."""
        watched = self.cfg.timeline is not None or self.cfg.metrics_port is not None
        period = STATS_PERIOD if watched else STATS_PERIOD_QUIET
        acc = self.conn.accepted
        if acc is not None and acc.session_timeout_ms:
            period = min(period, acc.session_timeout_ms / 1000 / 4)
        return max(0.05, period)

    async def refresh_stats(self, timeout: float = 2.0) -> None:
        session = self.conn.session
        if not session or not self.conn.connected.is_set():
            return
        try:
            figures = await self.conn.transport.stats(session, timeout=timeout)
        except TransportError as e:
            stream = self.conn.stream
            if oom_killed(str(e)) and session == self.conn.session:
                # The host's OOM killer ended the session while this poll was out
                # (its stream's ABORTED may come later): stop, as the stream would.
                if not self.conn.closing:
                    self.conn.killed(str(e))
                return
            if "UNAUTHENTICATED" in str(e) and stream is not None and session == self.conn.session:
                # The host ended our session (expired while we were paused, say):
                # the stream is as good as gone; reconnect and fence.
                self.conn.lost(stream, f"the host ended the session ({e})")
            return
        if figures.self_guest is not None:
            self.host_figures = figures.self_guest
            self.host_resident_bytes = figures.self_guest.resident_bytes

    async def _touch_flusher(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.touch_flush_seconds)
            await self.flush_touches()

    async def _watch_stalls(self) -> None:
        """Say so when a report has been out longer than stall_warning (once per chain)."""
        while True:
            await asyncio.sleep(WATCH_PERIOD)
            self.conn.problems.flush()
            now = time.monotonic()
            for chain in list(self.window.chains.values()):
                age = now - chain.sent_at
                if not chain.warned and age >= self.cfg.stall_warning:
                    chain.warned = True
                    self.stalls += 1
                    self.log(
                        f"report {chain.id} unanswered for {age:.1f}s (host slow or stalled): "
                        f"its {chain.pages * PAGE_SIZE >> 20} MiB stay isolated until the host "
                        "answers or is fenced"
                    )

    async def stop(self) -> None:
        """Flush touches, fetch final figures, close the session and the channel."""
        if self._stopped:
            return
        self._stopped = True
        self._settle_event.set()  # no waiter outlives the driver
        if self.conn.connected.is_set():
            # Bounded: a stalled host must not hold the guest's exit for long.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush_touches(), STOP_RPC_SECONDS)
            await self.refresh_stats(timeout=STOP_RPC_SECONDS)
        self.conn.closing = True
        self.conn.problems.flush(force=True)
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        await self.conn.close()
