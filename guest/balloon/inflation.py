"""The rest of virtio-balloon in the guest (issue 24): inflate and deflate to the
host's target, deflate-on-oom, and the stats queue — as Linux's
drivers/virtio/virtio_balloon.c does them.

* The host's target comes as a config change (a ConfigMsg on the stream:
  ``num_pages``). ``update_balloon_size_func`` moves towards it in steps of at
  most VIRTIO_BALLOON_ARRAY_PFNS_MAX (256) pages: ``fill_balloon`` takes order-0
  pages from the buddy allocator (Linux: balloon_page_alloc, movable, order 0,
  __GFP_NORETRY — here BuddyAllocator.alloc(0), which never waits) and sends
  them on the inflate queue; ``leak_balloon`` takes pages out and sends them on
  the deflate queue. A page is in the balloon (counted in ``actual``) once the
  host has answered its inflate; it is never allocatable while there: it is an
  allocated block only the balloon holds, written by nothing.
* Short of memory (an allocation fails), fill stops with what it got ("Out of
  puff!", rate-limited), waits 200 ms and tries again while below the target,
  as fill_balloon and update_balloon_size_func do.
* The host does not offer MUST_TELL_HOST, so a deflated page may be reused
  before the host answers (virtio 1.2, 5.5.6.1): deflate frees the pages, then
  tells the host.
* VIRTIO_BALLOON_F_DEFLATE_ON_OOM: an allocation that fails takes
  VIRTIO_BALLOON_OOM_NR_PAGES (256) pages back first and is tried again
  (virtio_balloon_oom_notify), counted; the target stays, so the balloon fills
  again only when the host changes it.
* With STATS_VQ the guest sends its stats every ``stats_interval_ms`` the host
  named (the tags it models: free, total and available memory, the host's
  major and minor faults, allocation stalls).
* At the end every page goes back (remove_common: leak_balloon(num_pages)).
* After a reconnect the host's record of the balloon is new: the balloon's
  pages are sent on the inflate queue again before anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from guest.balloon.transport import TransportError
from guest.mm.buddy import BuddyAllocator
from pagehint.ratelog import RateLimitedLog
from virtqueue import codec
from virtqueue import features as F
from virtqueue.codec import Accepted, ConfigMsg, PagesMsg, StatsMsg, UsedMsg
from virtqueue.contract import PAGE_SIZE

if TYPE_CHECKING:
    from guest.balloon.connection import Connection
    from guest.balloon.touch_link import TouchLink
    from guest.balloon.window import ChainWindow

log = logging.getLogger(__name__)

ARRAY_PFNS_MAX = 256  # VIRTIO_BALLOON_ARRAY_PFNS_MAX: pages per inflate/deflate message
OOM_NR_PAGES = 256  # VIRTIO_BALLOON_OOM_NR_PAGES: pages one OOM notification frees
OUT_OF_PUFF_WAIT = 0.2  # fill_balloon's msleep(200) after a failed allocation

# VIRTIO_BALLOON_S_* (include/uapi/linux/virtio_balloon.h)
S_MAJFLT, S_MINFLT, S_MEMFREE, S_MEMTOT, S_AVAIL, S_ALLOC_STALL = 2, 3, 4, 5, 6, 11


class GuestBalloon:
    def __init__(
        self, conn: Connection, window: ChainWindow, link: TouchLink, mm: BuddyAllocator
    ) -> None:
        self.conn, self.window, self.link, self.mm = conn, window, link, mm
        self.target = 0  # pages the host asks for
        self.pages: list[int] = []  # in the balloon: the host answered their inflate
        self.changed = asyncio.Event()
        # Move towards the target: set by the host's word (a target, a session),
        # cleared once there — not by deflate-on-oom, which (as Linux's
        # virtio_balloon_oom_notify) leaves the balloon below its target until the
        # host speaks again, and stops a fill under way.
        self.refill = False
        self.negotiated = False
        self.features = 0
        self.stats_interval = 0.0
        self.oom_deflated_pages = 0
        self.inflated_pages = 0  # taken into the balloon over the run
        self.oom_deflations = 0
        self.inflate_failures = 0  # fills cut short by a failed allocation
        self.alloc_stalls = 0  # allocations that failed (the stats' alloc-stalls)
        self._resend = False  # a new session: the host must hear of every page again
        self._oom_told: list[int] = []  # pages deflate-on-oom freed, to tell the host
        self.problems = RateLimitedLog(log)

    # ---- the host's word ---------------------------------------------------------------

    def adopt(self, acc: Accepted) -> None:
        """A new session: the balloon only if both sides have it."""
        self.negotiated = acc.balloon
        self.features = acc.features
        self.stats_interval = acc.stats_interval_ms / 1000
        self._resend = bool(self.pages)
        self.refill = True
        self.changed.set()

    def on_config(self, msg: ConfigMsg) -> None:
        self.target = min(msg.num_pages, self.mm.nr_pages)
        self.refill = True
        self.changed.set()

    @property
    def actual(self) -> int:
        return len(self.pages)

    # ---- update_balloon_size_func ------------------------------------------------------

    async def run(self) -> None:
        """Tell the host of pages deflate-on-oom took, and move towards the target
        when it changed (or a fill fell short and waits to try again)."""
        while True:
            await self.changed.wait()
            self.changed.clear()
            if not self.negotiated or not self.conn.connected.is_set():
                continue
            try:
                await self._settle()
            except TransportError:
                continue  # the stream broke: the next session's adopt wakes us

    async def _settle(self) -> None:
        if self._resend:
            await self._resend_all()
        await self._tell_oom_deflated()
        while self.refill and self.actual < self.target:
            if self._resend or self._oom_told:
                self.changed.set()  # a new session or an OOM deflate first
                return
            got = await self.fill(min(ARRAY_PFNS_MAX, self.target - self.actual))
            if got < 0:
                self.refill = False  # the host refused: wait for its next target
                return
            if got == 0:
                # Out of puff: try again in 200 ms (or at the next target).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), OUT_OF_PUFF_WAIT)
                self.changed.set()
                return
        while self.refill and self.actual > self.target:
            if self._resend:
                self.changed.set()
                return
            await self.leak(min(ARRAY_PFNS_MAX, self.actual - self.target))
        self.refill = False

    async def fill(self, want: int) -> int:
        """fill_balloon: up to ``want`` order-0 pages into the balloon; how many
        (0: none to be had; -1: the host refused them)."""
        pfns: list[int] = []
        for _ in range(want):
            pfn = self.mm.alloc(0)
            if pfn < 0:
                break
            pfns.append(pfn)
        if len(pfns) < want:
            self.inflate_failures += 1
            self.problems.note(
                "puff", f"balloon: out of puff, could get only {len(pfns)} of {want} pages"
            )
        if not pfns:
            return 0
        try:
            used = await self._send(True, pfns, self.actual + len(pfns))
        except BaseException:
            # Not sent, or its answer never to come (the stream broke, the driver
            # stops): the pages go back (the host may have dropped them).
            self._free(pfns)
            raise
        if used.status != codec.DONE:
            # Refused, or stranded and not known done: give them back (the host may
            # have discarded them: the touch tracker hears so, to be safe).
            self._free(pfns)
            if used.reason != "cancelled":
                self.problems.note("refused", f"balloon: inflate refused ({used.reason})")
                return -1
            return 0
        self.pages.extend(pfns)
        self.inflated_pages += len(pfns)
        return len(pfns)

    async def leak(self, want: int) -> int:
        """leak_balloon: pages out of the balloon, freed, then the host told."""
        pfns = self._take(want)
        self._free(pfns)
        await self._send(False, pfns, self.actual)
        return len(pfns)

    async def _resend_all(self) -> None:
        """The host's record of the balloon is this session's: send it every page."""
        self._resend = False
        held, self.pages = self.pages, []
        for i in range(0, len(held), ARRAY_PFNS_MAX):
            part = held[i : i + ARRAY_PFNS_MAX]
            try:
                used = await self._send(True, part, len(self.pages) + len(part))
            except BaseException:
                # The stream broke again: the rest stays in the balloon, to be told
                # to the next session.
                self.pages.extend(held[i:])
                self._resend = True
                raise
            if used.status == codec.DONE:
                self.pages.extend(part)
            else:
                self._free(part)

    # ---- deflate-on-oom ------------------------------------------------------------------

    def on_oom(self) -> int:
        """virtio_balloon_oom_notify: an allocation failed; pages freed (0: none)."""
        self.alloc_stalls += 1
        if not (self.negotiated and F.has(self.features, F.DEFLATE_ON_OOM)) or not self.pages:
            return 0
        pfns = self._take(OOM_NR_PAGES)
        self._free(pfns)
        self._oom_told.extend(pfns)
        self.refill = False
        self.oom_deflated_pages += len(pfns)
        self.oom_deflations += 1
        self.problems.note(
            "oom", f"balloon: deflated {len(pfns)} pages on OOM ({self.oom_deflated_pages} in all)"
        )
        self.changed.set()  # tell the host (no MUST_TELL_HOST: after the fact), no refill
        return len(pfns)

    async def _tell_oom_deflated(self) -> None:
        while self._oom_told:
            part, self._oom_told = self._oom_told[:ARRAY_PFNS_MAX], self._oom_told[ARRAY_PFNS_MAX:]
            await self._send(False, part, self.actual)

    # ---- the stats queue ---------------------------------------------------------------

    def stats(self) -> StatsMsg:
        free = self.mm.nr_free_pages * PAGE_SIZE
        major, minor = self.link.major_faults, self.link.minor_faults
        tags = (S_MAJFLT, S_MINFLT, S_MEMFREE, S_MEMTOT, S_AVAIL, S_ALLOC_STALL)
        values = (major, minor, free, self.mm.ram_bytes, free, self.alloc_stalls)
        return StatsMsg(tags, values)

    async def send_stats(self) -> None:
        """Every stats_interval the host named (STATS_VQ), the guest's stats."""
        first = True
        while True:
            interval = self.stats_interval
            if not (self.negotiated and interval > 0 and F.has(self.features, F.STATS_VQ)):
                await asyncio.sleep(0.5)
                continue
            if first:
                # A random phase: a host's guests that booted together do not all
                # send in the same instant (each VM's stats timer runs on its own).
                first = False
                await asyncio.sleep(interval * random.random())
                continue
            stream = self.conn.stream
            if stream is not None and self.conn.connected.is_set():
                with contextlib.suppress(TransportError):
                    async with self.link.write_lock:
                        await stream.write(self.stats())
            await asyncio.sleep(interval)

    # ---- pages in and out --------------------------------------------------------------

    def _take(self, want: int) -> list[int]:
        taken = self.pages[-want:] if want else []
        del self.pages[len(self.pages) - len(taken) :]
        return taken

    def _free(self, pfns: Sequence[int]) -> None:
        """Pages back to the allocator; the host may have dropped their frames, so a
        later touch of them must be told (the touch tracker hears they are discarded)."""
        self.link.touches.discarded([(p, 0) for p in pfns])
        for p in pfns:
            self.mm.free(p, 0)

    async def _send(self, inflate: bool, pfns: Sequence[int], actual: int) -> UsedMsg:
        """One message on the inflate or deflate queue, answered (or settled by a
        fence) like a chain: it shares the chains' ids and window."""
        ranges = [(p, 0) for p in pfns]
        _, used = await self.link.send_answered(
            self.window, ranges, [0] * len(ranges), lambda i: PagesMsg(inflate, i, pfns, actual)
        )
        return used

    def release_all(self) -> int:
        """remove_common: every page back to the allocator (the run is over)."""
        pfns, self.pages = self.pages, []
        self._free(pfns)
        return len(pfns)
