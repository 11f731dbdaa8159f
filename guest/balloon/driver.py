"""The virtio-balloon driver: the ReportingDevice the hinting policies see.

``report(batch)`` sends the batch as one chain and returns when the host has
used it (DONE); it raises ReportError when the host refused it, its discard
failed, or a fence showed it was never discarded — the policy then puts the
blocks back unreported. It never gives up on a chain by itself: a chain is
outstanding until it is answered or fenced (see window.py and connection.py),
however long the host takes. A report that is out for longer than
``stall_warning`` is logged once, and the age of the oldest is a metric.

At most queue-size chains are outstanding (the ring's size). The chain
capacity flows one way, from the host's answer (max_chain_ranges, the size of
its queue): the driver takes it from the first session and the policy checks
its own --capacity against it once, when it registers (Policy: DeviceTooSmall),
as virtio-balloon refuses to register page reporting with -ENOSPC when its
queue is smaller than PAGE_REPORTING_CAPACITY. A later session may not shrink
it. The host's answer also gives the minimum order, which raises the policy's,
as page_reporting_dev_info's order does.

The host's memory model and the touches are ``TouchLink``'s (touch_link.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from guest.balloon.connection import (
    Backoff,
    Connection,
    SessionUnusable,
    id_in_use,
)
from guest.balloon.free_page_hint import FreePageHinting, shrink
from guest.balloon.host_view import HostView
from guest.balloon.inflation import GuestBalloon
from guest.balloon.migration import MigrationAgent
from guest.balloon.queue_socket import QueueSocketTransport
from guest.balloon.touch_link import TouchLink, nothing
from guest.balloon.transport import (
    GrpcTransport,
    NegotiationRefused,
    Transport,
    TransportError,
)
from guest.balloon.window import ChainWindow, Outstanding
from guest.hinting.device import Block, ReportError
from guest.mm.buddy import BuddyAllocator
from guest.mm.constants import PAGE_SIZE
from pagehint.config import GuestConfig
from pagehint.errors import UsageError
from pagehint.tls import unreachable_hint
from virtqueue import codec
from virtqueue import features as F
from virtqueue.codec import (
    Accepted,
    ChainMsg,
    ConfigMsg,
    Negotiation,
    UsedMsg,
)

log = logging.getLogger(__name__)

STOP_RPC_SECONDS = 0.5  # each last call to the host when stopping (touches, stats, close)


def _columns(batch: Sequence[Block]) -> tuple[Sequence[int], Sequence[int]]:
    """(pfns, orders) of a batch, transposed in C (``zip(*batch)``)."""
    pfns, orders = zip(*batch, strict=True) if batch else ((), ())
    return pfns, orders


def _chain(pfns: Sequence[int], orders: Sequence[int]) -> Callable[[int], ChainMsg]:
    """The chain's message, once its id is known."""
    return lambda chain_id: ChainMsg(chain_id, pfns, orders)


def default_transport(cfg: GuestConfig) -> Transport:
    """gRPC to --host; with --queue-socket, the streams on that socket."""
    assert cfg.host is not None
    grpc_transport = GrpcTransport(cfg.host, cfg.tls, cfg.token)
    if cfg.queue_socket is None:
        return grpc_transport
    return QueueSocketTransport(grpc_transport, cfg.queue_socket)


class BalloonDriver:
    def __init__(
        self,
        cfg: GuestConfig,
        mm: BuddyAllocator,
        transport: Transport | None = None,
    ) -> None:
        assert cfg.host is not None or transport is not None
        self.cfg = cfg
        self.mm = mm
        self.address = cfg.host or "(injected transport)"
        # What the policy needs; the host's answer may raise the order.
        self.min_order = cfg.hinting.order
        # Ranges per chain: the host's (its answer's max_chain_ranges), as a
        # virtqueue's size is the device's; 0 until the first session.
        self.capacity = 0
        self.on_chain_written: Callable[[], None] = nothing  # KernelWork.written: host has it
        self.window = ChainWindow()
        self.conn = Connection(
            transport if transport is not None else default_transport(cfg),
            self.window,
            negotiation=self._negotiation,
            accept=self._adopt,
            address=self.address,
            backoff=Backoff(cfg.reconnect_min, cfg.reconnect_max, random.Random()),
        )
        self._tasks: list[asyncio.Task[Any]] = []
        # The balloon's page work (inflation, hint runs): stopped before pages go back.
        self._page_work: list[asyncio.Task[None]] = []
        self._stopped = False
        # Called with each new session's acceptance (the shm RAM moves to a new file).
        self.on_session: list[Callable[[Accepted], None]] = []
        self.view = HostView(self.conn, self.window, cfg)
        self.link = TouchLink(
            self.conn, mm, batch=cfg.touch_batch, flush_seconds=cfg.touch_flush_seconds
        )
        self.conn.on_notice = self.link.on_notice
        # The rest of the balloon: inflate/deflate to the host's target, stats.
        self.balloon = GuestBalloon(self.conn, self.window, self.link, mm)
        # Free page hinting (issue 25): the config space carries its command id too.
        self.hints = FreePageHinting(self.conn, self.link, mm)
        # Snapshots (issue 25): the dirty log, the pause, the image check.
        self.migration = MigrationAgent(self.conn, self.link, mm.nr_pages)
        self.conn.on_config = self._on_config
        self.conn.on_fatal.append(self.link.release_waiters)

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
        # Ascending pfn order: the host's check takes one pass over such a chain
        # (and the chain's record, the --reports line, shows what was sent).
        sent = sorted(batch)
        pfns, orders = _columns(sent)
        try:
            chain, used = await self.link.send_answered(
                self.window, sent, orders, _chain(pfns, orders), self.on_chain_written
            )
        except TransportError:
            raise ReportError(f"host {self.address} unavailable", reason="unavailable") from None
        self.view.chain_answered(chain, used)
        if log.isEnabledFor(logging.DEBUG):  # -v: a line per chain
            _debug_chain(chain, used)
        if used.status != codec.DONE:
            name = codec.STATUS_NAMES.get(used.status, str(used.status))
            why = f"{used.reason}: {used.detail}" if used.detail else used.reason
            raise ReportError(f"host answered {name} ({why})", reason=used.reason or name)
        self.view.chain_done(chain, used)
        if used.discarded_pages:
            self.link.touches.discarded(batch)

    # ---- connection -----------------------------------------------------------------

    def _negotiation(self, previous_session: str) -> Negotiation:
        offered = F.mask(F.REPORTING, F.STATS_VQ, F.DEFLATE_ON_OOM, F.FREE_PAGE_HINT)
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
            previous_session,
            # Always offered: a host without --host-memory answers false (or, older,
            # does not know the field), and nothing changes.
            host_memory=True,
            balloon=True,  # likewise: an older host answers false
            migration=True,  # likewise
            touches_in_chain=True,  # likewise: an older host answers false
        )

    def _adopt(self, acc: Accepted) -> None:
        """Check a new session against what the policy needs, then take it on."""
        if not F.has(acc.features, F.REPORTING):
            raise SessionUnusable("the host did not accept VIRTIO_BALLOON_F_REPORTING")
        reports = 0 if self.cfg.hinting.policy == "none" else self.cfg.hinting.effective_capacity()
        if self.conn.connects and acc.max_chain_ranges < reports:
            # The running policy registered against the first host; a later one
            # must take its reports (the first answer's check is the policy's own).
            raise SessionUnusable(
                f"the host takes at most {acc.max_chain_ranges} ranges per chain but the "
                f"running {self.cfg.hinting.policy} policy reports {reports}"
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
        self.view.new_session(acc)
        if not self.conn.connects:
            # The ring's size is fixed by the first session: stranded chains of a
            # later one still hold their slots until their fence settles them.
            self.window.resize(acc.queue_size)
        self.capacity = acc.max_chain_ranges
        self.link.adopt(acc)
        self.balloon.adopt(acc)
        self.hints.adopt(acc)
        self.migration.adopt(acc)

    def _on_config(self, msg: ConfigMsg) -> None:
        """virtballoon_changed: the whole config space, to each of its readers."""
        for part in (self.balloon, self.hints, self.migration):
            part.on_config(msg)

    def on_oom(self) -> int:
        """An allocation failed (free_page_hint.py ``shrink``)."""
        return shrink(self.balloon, self.hints)

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
                    if "--queue-socket" in why:  # the host answered; its socket did not
                        raise UsageError(
                            f"cannot open the reporting stream in {limit:g}s: {why}"
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
        self._spawn(self.view.poll_stats(), "balloon-stats")
        self._spawn(self.link.flusher(), "balloon-touches")
        self._spawn(self.view.watch_stalls(), "balloon-stall-watch")
        self._page_work = [
            self._spawn(self.balloon.run(), "balloon-inflation"),
            self._spawn(self.hints.run(), "balloon-free-page-hint"),
        ]
        self._spawn(self.migration.run(), "balloon-migration")
        self._spawn(self.balloon.send_stats(), "balloon-stats-queue")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A background task that stop() cancels and that is forgotten once done."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    async def stop(self) -> None:
        """Flush touches, fetch final figures, close the session and the channel."""
        if self._stopped:
            return
        self._stopped = True
        # As virtballoon_remove: the balloon's work stopped first, then every page back
        # (remove_common); an inflate still out frees its own pages as it ends.
        for task in self._page_work:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.balloon.release_all()
        self.hints.give_back(len(self.hints.blocks))
        self.balloon.problems.flush(force=True)
        self.link.release_waiters()  # no waiter outlives the driver
        if self.conn.connected.is_set():
            # Bounded: a stalled host must not hold the guest's exit for long.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.link.flush_touches(), STOP_RPC_SECONDS)
            await self.view.refresh_stats(timeout=STOP_RPC_SECONDS)
        self.conn.closing = True
        self.conn.problems.flush(force=True)
        self.link.stop()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        await self.conn.close()


def _debug_chain(chain: Outstanding, used: UsedMsg) -> None:
    ms = (time.monotonic() - chain.sent_at) * 1000
    why = f" ({used.reason})" if used.reason else ""
    log.debug(
        f"chain {chain.id}: {len(chain.batch)} ranges, {chain.pages} pages, "
        f"{codec.STATUS_NAMES.get(used.status, str(used.status))}{why} in {ms:.2f} ms"
    )
