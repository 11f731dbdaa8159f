"""The virtio-balloon driver: negotiates, sends each batch as one chain, awaits its used.

It is the ReportingDevice the hinting policies see. ``report(batch)`` returns
only when the host has handed the chain back as used, and raises ReportError
if the host refuses it, the stream breaks, or the host is away: the policy
then puts the pages back unreported. At most queue-size chains are
outstanding (the ring's size). When the host goes away the driver reconnects
with backoff and negotiates a new session; the workload never waits for it.

The host cannot see the guest's page faults, so the driver tells it which
frames the guest touched since the host last discarded them (or ever), in
batches, in the same ordered stream as the chains: a touch always reaches the
host before any later chain that reports the same frame again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import grpc

from guest.hinting.device import Block, ReportError
from guest.mm.buddy import BuddyAllocator
from guest.mm.constants import PAGE_SIZE
from pagehint.config import GuestConfig
from pagehint.errors import UsageError
from virtqueue import codec
from virtqueue import features as F

STATS_PERIOD = 0.25  # seconds between host-stats polls (for host_resident_bytes)
NEGOTIATE_TIMEOUT = 5.0


class BalloonDriver:
    def __init__(self, cfg: GuestConfig, mm: BuddyAllocator, log: Callable[[str], None]) -> None:
        assert cfg.host is not None
        self.cfg = cfg
        self.mm = mm
        self.log = log
        self.address = cfg.host
        self.min_order = cfg.hinting.order
        self.capacity = cfg.hinting.effective_capacity()
        self.connected = asyncio.Event()
        self.accepted: codec.Accepted | None = None
        self._channel: Any = None
        self._stub: Any = None
        self._call: Any = None
        self._window = asyncio.Semaphore(1)
        self._write_lock = asyncio.Lock()
        self._outstanding: dict[int, asyncio.Future[int]] = {}
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task[Any]] = []
        self._stream_done: asyncio.Event = asyncio.Event()
        # 1 where the host holds the frame as far as the guest knows (set per session).
        self.host_has = bytearray()
        self._touch_runs: list[tuple[int, int]] = []
        # The sim ledger needs to be told of touches; with shm the kernel sees them.
        self._track_touches = True
        self.host_figures: codec.GuestFigures | None = None
        self.host_resident_bytes: int | None = None
        self.connects = 0
        self.touched_pages_sent = 0
        self._closing = False
        # Called with each new session's acceptance (the shm RAM moves to a new file).
        self.on_session: list[Callable[[codec.Accepted], None]] = []

    # ---- ReportingDevice -------------------------------------------------------------

    async def report(self, batch: Sequence[Block]) -> None:
        if not self.connected.is_set() or self._call is None:
            raise ReportError(f"host {self.address} unavailable")
        call = self._call
        async with self._window:
            if call is not self._call:
                raise ReportError("stream was replaced while waiting for a slot")
            chain_id = next(self._ids)
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._outstanding[chain_id] = fut
            try:
                async with self._write_lock:
                    await self._flush_touches_locked(call)
                    await call.write(codec.encode_chain(chain_id, batch))
                discarded = await fut
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, ConnectionError) as e:
                raise ReportError(f"stream broke: {_why(e)}") from None
            finally:
                self._outstanding.pop(chain_id, None)
        if discarded and self._track_touches:
            # The host no longer holds these frames: the next touch must be told.
            hh = self.host_has
            for pfn, order in batch:
                n = 1 << order
                hh[pfn : pfn + n] = bytes(n)

    # ---- touches ------------------------------------------------------------------------

    def on_alloc(self, pfn: int, order: int) -> None:
        """GuestMemory listener: the workload touches the block it allocated."""
        if not self._track_touches:
            return
        hh = self.host_has
        if order == 0:
            if hh[pfn]:
                return
            hh[pfn] = 1
            n = 1
        else:
            n = 1 << order
            if hh[pfn : pfn + n].count(0) == 0:
                return
            hh[pfn : pfn + n] = b"\x01" * n
        runs = self._touch_runs
        if runs and runs[-1][0] + runs[-1][1] == pfn:
            runs[-1] = (runs[-1][0], runs[-1][1] + n)
        else:
            runs.append((pfn, n))
        if len(runs) >= self.cfg.touch_batch and self.connected.is_set():
            self._spawn(self.flush_touches(), "balloon-touch-flush")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """A background task that stop() cancels and that is forgotten once done."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    async def flush_touches(self) -> None:
        call = self._call
        if call is None or not self._touch_runs:
            return
        async with self._write_lock:
            with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, ConnectionError):
                await self._flush_touches_locked(call)

    async def _flush_touches_locked(self, call: Any) -> None:
        while self._touch_runs:
            runs = self._touch_runs[: self.cfg.touch_batch]
            await call.write(codec.encode_touched(runs))
            del self._touch_runs[: len(runs)]
            self.touched_pages_sent += sum(n for _, n in runs)

    # ---- connection ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect once (a clear UsageError if the host cannot be reached), then keep connected."""
        try:
            await asyncio.wait_for(self._connect(), self.cfg.connect_timeout)
        except (grpc.aio.AioRpcError, TimeoutError, OSError, ConnectionError) as e:
            await self._close_channel()
            why = (
                f"no answer in {self.cfg.connect_timeout:g}s"
                if isinstance(e, TimeoutError)
                else _why(e)
            )
            raise UsageError(f"cannot reach host {self.address}: {why}") from None
        self._spawn(self._keep_connected(), "balloon-connection")
        self._spawn(self._poll_stats(), "balloon-stats")
        self._spawn(self._touch_flusher(), "balloon-touches")

    async def _connect(self) -> None:
        await self._close_channel()
        self._channel = grpc.aio.insecure_channel(self.address)
        self._stub = codec.stub(self._channel)
        offered = F.mask(F.REPORTING)
        poison = 0
        if self.cfg.poison is not None:
            offered |= F.mask(F.PAGE_POISON)
            poison = self.cfg.poison
        reply = await self._stub.Negotiate(
            codec.encode_negotiate(
                codec.Negotiation(
                    self.cfg.guest_id, self.mm.ram_bytes, PAGE_SIZE, offered, poison, self.capacity
                )
            ),
            timeout=min(NEGOTIATE_TIMEOUT, self.cfg.connect_timeout),
            wait_for_ready=True,
        )
        acc = codec.decode_accepted(reply)
        if not F.has(acc.features, F.REPORTING):
            raise UsageError("the host did not accept VIRTIO_BALLOON_F_REPORTING")
        for cb in self.on_session:
            cb(acc)
        self.accepted = acc
        self.capacity = min(self.capacity, acc.max_chain_ranges)
        self._window = asyncio.Semaphore(max(1, acc.queue_size))
        self._ids = itertools.count(1)
        self._call = self._stub.Reporting(metadata=((codec.SESSION_KEY, acc.session),))
        self._stream_done = asyncio.Event()
        self._track_touches = acc.backend != "shm"
        self._retouch_all()
        self._spawn(self._read_used(self._call), "balloon-used")
        self.connects += 1
        self.connected.set()
        self.log(
            f"connected to host {self.address}: session {acc.session[:8]}…, backend {acc.backend}, "
            f"features {F.describe(acc.features)}, queue {acc.queue_size}"
        )

    def _retouch_all(self) -> None:
        """A new session: the host holds nothing for us yet; tell it what we use."""
        self._touch_runs = []
        self.host_has = bytearray(self.mm.nr_pages if self._track_touches else 0)
        if not self._track_touches:
            return
        for b in self.mm.blocks():
            if b.state == "allocated":
                self.on_alloc(b.pfn, b.order)

    async def _read_used(self, call: Any) -> None:
        why = "stream ended"
        try:
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    break
                chain_id, discarded = codec.decode_used(msg)
                fut = self._outstanding.get(chain_id)
                if fut is not None and not fut.done():
                    fut.set_result(discarded)
        except grpc.aio.AioRpcError as e:
            why = _why(e)
        except asyncio.CancelledError:
            why = "driver stopping"
            raise
        finally:
            if call is self._call:
                self.connected.clear()
                self._call = None
                self._stream_done.set()
            for fut in self._outstanding.values():
                if not fut.done():
                    fut.set_exception(ReportError(f"host connection lost: {why}"))
            if not self._closing:
                self.log(f"host connection lost: {why}")

    async def _keep_connected(self) -> None:
        delay = self.cfg.reconnect_min
        while True:
            await self._stream_done.wait()
            if self._closing:
                return
            while True:
                await asyncio.sleep(delay)
                try:
                    await asyncio.wait_for(self._connect(), NEGOTIATE_TIMEOUT + 1)
                    delay = self.cfg.reconnect_min
                    break
                except (grpc.aio.AioRpcError, TimeoutError, OSError, ConnectionError) as e:
                    delay = min(self.cfg.reconnect_max, delay * 2)
                    self.log(
                        f"reconnect to {self.address} failed ({_why(e)}); retry in {delay:.1f}s"
                    )

    async def _poll_stats(self) -> None:
        while True:
            await self.refresh_stats()
            await asyncio.sleep(STATS_PERIOD)

    async def refresh_stats(self) -> None:
        if self.accepted is None or self._stub is None or not self.connected.is_set():
            return
        try:
            reply = await self._stub.Stats(
                codec.encode_stats_request(self.accepted.session), timeout=2.0
            )
        except grpc.aio.AioRpcError:
            return
        figures = codec.decode_host_stats(reply).self_guest
        if figures is not None:
            self.host_figures = figures
            self.host_resident_bytes = figures.resident_bytes

    async def _touch_flusher(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.touch_flush_seconds)
            await self.flush_touches()

    async def stop(self) -> None:
        """Flush touches, fetch final figures, close the session and the channel."""
        if self._closing:
            return
        if self.connected.is_set():
            await self.flush_touches()
            await self.refresh_stats()
        self._closing = True
        if self.accepted is not None and self._stub is not None and self.connected.is_set():
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self._stub.Close(codec.encode_close(self.accepted.session), timeout=2.0)
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        self.connected.clear()
        await self._close_channel()

    async def _close_channel(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


def _why(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        detail = (e.details() or "").splitlines()[0] if e.details() else ""
        return f"{e.code().name}: {detail}" if detail else e.code().name
    return str(e) or type(e).__name__
