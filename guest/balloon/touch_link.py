"""The guest's half of the host's memory model (issue 23), and the touches.

The guest always offers ``host_memory``; a host with --host-memory accepts it
and then sends Notices. The link then tracks touches on both backends, numbers
each touch batch (``seq``), flushes queued touches at once (a touch of a
swapped frame is a fault the workload waits for, not a figure that may lag),
clears the "host has" bit of every frame a Notice names evicted, and hands each
Notice's delay to the workload (``on_fault_delay``). With shm it also keeps the
guest's own reads and writes of its pages (guest/ram.py stamps) behind the
Notice that settles the batch that touched them (``gate``): the host copies a
swapped chunk back before that Notice, and a write into the hole before that
would be overwritten. An eviction Notice with an ``evict_id`` is acknowledged
on the next write (``evict_ack``), ahead of any touch made since, once the RAM
has re-gated what waits (``on_evicted``): only then does the host move the
frames out. Without the model it only tracks touches for the sim's ledger.

Touches and chains share one stream and one write lock (``write_lock``): a
chain is written after every touch queued before it (``before_chain``). Where
the host said it takes them (touches_in_chain) and the touches are unnumbered
(no host_memory), the last batch goes in the chain itself: one write, not two —
on a loop shared by a hundred guests each write is a pass of the loop an
acknowledgement waits for.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from guest.balloon.connection import Connection
from guest.balloon.touches import TouchTracker
from guest.balloon.transport import Stream, TransportError
from guest.balloon.window import ChainWindow, Outstanding
from guest.hinting.device import Block
from guest.mm.buddy import BuddyAllocator
from virtqueue.codec import Accepted, ChainMsg, GuestMsg, NoticeMsg, TouchedMsg, UsedMsg
from virtqueue.contract import (
    CHAIN_RANGE_BYTES,
    MAX_GUEST_MESSAGE_BYTES,
    MESSAGE_FRAME_BYTES,
    TOUCH_RUN_BYTES,
)


def nothing() -> None:
    """A callback that does nothing (the default of one)."""


class TouchLink:
    def __init__(
        self, conn: Connection, mm: BuddyAllocator, *, batch: int, flush_seconds: float
    ) -> None:
        self.conn = conn
        self.mm = mm
        self.flush_seconds = flush_seconds
        self.touches = TouchTracker(batch)
        # Touches and chains go out on one stream, one writer at a time.
        self.write_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped = False
        self.regates = 0  # eviction Notices taken in (before_chain looks again after one)
        self.host_memory = False
        # Touches may ride in chains (Chain.touched): the host said it takes them,
        # and they are unnumbered (no host_memory, so no Notice answers them).
        self.carry = False
        self.host_memory_seen = False  # any session had it: the summary's fault figures
        self.gated = False  # shm with host_memory: accesses wait for their touches
        self.major_faults = self.minor_faults = 0  # summed over Notices (major: swap-ins)
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

    def _spawn_flush(self) -> None:
        task = asyncio.get_running_loop().create_task(self.flush_touches(), name="touch-flush")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send_answered(
        self,
        window: ChainWindow,
        batch: Sequence[Block],
        orders: Sequence[int],
        make: Callable[[int], GuestMsg],
        on_written: Callable[[], None] = nothing,
    ) -> tuple[Outstanding, UsedMsg]:
        """One message the host answers by id (a chain, balloon pages): a slot in the
        ring, written after the touches queued before it (then ``on_written``), out
        until answered or fenced. TransportError only when not connected (a write
        that fails may or may not have reached the host: only a fence can tell)."""
        async with window.slots:
            stream, session = self.conn.stream, self.conn.session
            if stream is None or not self.conn.connected.is_set():
                raise TransportError("not connected")
            out = window.open(batch, orders, session)
            try:
                try:
                    async with self.write_lock:
                        # The stream may have broken, or a new session begun, while
                        # this waited: then nothing goes on it (the touches queued
                        # now are the new session's), and the fence settles ``out``.
                        if stream is self.conn.stream:
                            await self._write_after_touches(stream, make(out.id))
                            on_written()
                except TransportError as e:
                    self.conn.lost(stream, str(e))
                return out, await out.future
            finally:
                window.close(out)

    async def _write_after_touches(self, stream: Stream, msg: GuestMsg) -> None:
        """Under ``write_lock``: ``msg`` written after every touch queued before it,
        the last batch carried in it where it is a chain and the session lets it."""
        room = -1  # the most runs the message may carry (-1: none)
        if isinstance(msg, ChainMsg) and self.carry:
            used = len(msg.pfns) * CHAIN_RANGE_BYTES + MESSAGE_FRAME_BYTES
            room = (MAX_GUEST_MESSAGE_BYTES - used) // TOUCH_RUN_BYTES
        carried = await self.before_chain(stream, room)
        if carried is not None and isinstance(msg, ChainMsg):
            msg = msg._replace(touched=carried)
        await stream.write(msg)

    async def before_chain(self, stream: Stream, room: int = -1) -> TouchedMsg | None:
        """Under ``write_lock``, before a chain is written: every touch queued goes
        first — the last batch returned unwritten, for the chain to carry, when it
        has at most ``room`` runs (the chain and it fit in one message; -1: never)
        — and with the gate (shm, host_memory) the chain waits until they are
        settled: a block of it may be one whose check at its free still waits for
        its frames (guest/ram.py), and the host must not discard it before they
        are back and read. An eviction Notice while it waits re-gates those checks (guest/ram.py
        ``regate``: new touches, later tickets): then it waits for those too, or
        the host would discard the block before the check read it back (the
        chain's discard, then the check reading zeros: a loss)."""
        if room >= 0:  # carrying: never gated (no host_memory)
            return await self._send_touches(stream, room)
        while True:
            ticket = self.touches.runs_created
            regates = self.regates
            if self.touches.runs or self._evict_ack:
                await self._send_touches(stream)
            if not (self.gated and self.settled_runs < ticket):
                return None
            await self._settled_locked(ticket)
            if self.regates == regates or self._stopped or self.conn.fatal is not None:
                return None
            if stream is not self.conn.stream:
                return None  # a new session while it waited: nothing more on the old

    def adopt(self, acc: Accepted) -> None:
        """A new session: the host memory model on or off, and the old session's
        unsettled batches never will be. Nothing of ours is swapped in the new one
        (a new host file, our blocks copied into it: guest/ram.py move_to), so
        every access waiting on them may go ahead."""
        self.host_memory = acc.host_memory
        self.host_memory_seen = self.host_memory_seen or acc.host_memory
        self.gated = acc.host_memory and acc.backend == "shm"
        self.carry = acc.touches_in_chain and not acc.host_memory
        self._batches.clear()
        self.touch_seq = 0
        self._evict_ack = 0  # the old session's evictions are no business of the new
        self._settle_to(self.touches.runs_created)
        self.touches.reset(self.mm, enabled=acc.backend != "shm" or acc.host_memory)

    def release_waiters(self, _why: object = None) -> None:
        """No waiter for a settling Notice outlives the connection (or the driver)."""
        self._settle_event.set()

    def stop(self) -> None:
        self._stopped = True
        self.release_waiters()
        for t in list(self._tasks):
            t.cancel()

    def on_alloc(self, pfn: int, order: int) -> None:
        """GuestMemory listener: the workload touches the block it allocated."""
        full = self.touches.on_alloc(pfn, order)
        if not self.conn.connected.is_set():
            return
        if full or (self.host_memory and self.touches.runs and not self._flush_queued):
            # With host_memory a touch is a fault the workload waits on: one flush
            # per loop turn that queued runs, not one per touch_flush_seconds.
            self._flush_queued = True
            self._spawn_flush()

    async def flush_touches(self) -> None:
        self._flush_queued = False
        if self.conn.stream is None or not (self.touches.runs or self._evict_ack):
            return
        async with self.write_lock:
            # The stream as it is now: one that broke while this waited for the lock
            # must not take the touches a new session has queued since.
            stream = self.conn.stream
            if stream is None:
                return
            try:
                await self._send_touches(stream)
            except TransportError as e:
                self.conn.lost(stream, str(e))

    async def _send_touches(self, stream: Stream, room: int = -1) -> TouchedMsg | None:
        """Write every queued touch batch; the last one is returned unwritten
        instead when it has at most ``room`` runs (taken off the queue: its caller
        must send it)."""
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
            msg = TouchedMsg([p for p, _ in runs], [n for _, n in runs], seq, ack)
            if len(runs) <= room and not (self.touches.runs or self._evict_ack):
                return msg
            await stream.write(msg)
        return None

    def on_notice(self, n: NoticeMsg) -> None:
        """The host evicted frames, and/or settled a touch batch (with its cost)."""
        if not self.host_memory:
            return  # a host must not send one unasked: nothing of it is believed
        self.touches.evicted(n.evicted)
        if n.evict_id:
            # Nothing of ours touches those frames from here on without a touch
            # reported after this acknowledgement (accesses run on this loop, in order).
            self.regates += 1
            for regate in self.on_evicted:
                regate()
            self._evict_ack = max(self._evict_ack, n.evict_id)
            if not self._flush_queued and self.conn.connected.is_set():
                self._flush_queued = True
                self._spawn_flush()
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

    async def flusher(self) -> None:
        """Flush touches every touch_flush_seconds (a task of the driver's)."""
        while True:
            await asyncio.sleep(self.flush_seconds)
            await self.flush_touches()
