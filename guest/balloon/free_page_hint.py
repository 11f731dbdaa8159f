"""Free page hinting in the guest (issue 25): VIRTIO_BALLOON_F_FREE_PAGE_HINT, as
Linux's drivers/virtio/virtio_balloon.c does it.

* The host writes a command id into the config space (``free_page_hint_cmd_id``,
  a ConfigMsg here). ``report_free_page_func``: DONE (1) gives every hinted block
  back to the allocator (``return_free_pages_to_mm``); a new id other than STOP
  (0) starts a run (``virtio_balloon_report_free_page``).
* A run: the id is sent first (``send_cmd_id_start``); then blocks of order
  VIRTIO_BALLOON_HINT_BLOCK_ORDER (MAX_PAGE_ORDER, 10: 4 MiB) are allocated one
  by one from the buddy allocator and sent (``get_free_page_and_send``) until an
  allocation fails (no free block of that order left) or the host's id changed;
  then STOP is sent (``send_cmd_id_stop``). The blocks stay allocated, on the
  driver's free_page_list, until DONE: nothing reuses a hinted page while the
  host may be skipping or discarding it. Allocating them writes nothing into
  them (Linux's alloc_pages with __GFP_NORETRY; BuddyAllocator.alloc here).
* The shrinker (``virtio_balloon_shrinker_scan``, registered with
  FREE_PAGE_HINT as current Linux does; v5.2–5.7 registered it with
  DEFLATE_ON_OOM): under memory pressure hinted blocks go back, a whole block at
  a time (``shrink_free_pages``), before the balloon deflates (with
  DEFLATE_ON_OOM). Linux may reuse a block the host has not processed yet; a
  block still waiting in this driver's batch is taken out of it, so it is never
  sent. The host records hints and never discards them (host/hints.py).
  Departure: Linux's shrinkers run during reclaim for any order; here on an
  allocation failure of order 3 or less (guest/memory.py's OOM path).
* A new session knows nothing of the old one's runs: a run under way ends, and
  blocks still held go back (as after Firecracker's ``kick``, which sets DONE
  once a VM is restored). At the end every block goes back (``remove_common``).

Departure: the driver sends one block a buffer; here up to BATCH blocks go in
one message, sent as soon as the batch is full or the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from guest.balloon.transport import TransportError
from guest.mm.buddy import BuddyAllocator
from guest.mm.constants import MAX_ORDER
from virtqueue import features as F
from virtqueue.codec import Accepted, ConfigMsg, HintMsg

if TYPE_CHECKING:
    from guest.balloon.connection import Connection
    from guest.balloon.inflation import GuestBalloon
    from guest.balloon.touch_link import TouchLink

log = logging.getLogger(__name__)

CMD_ID_STOP = 0  # VIRTIO_BALLOON_CMD_ID_STOP
CMD_ID_DONE = 1  # VIRTIO_BALLOON_CMD_ID_DONE
HINT_BLOCK_ORDER = MAX_ORDER  # VIRTIO_BALLOON_HINT_BLOCK_ORDER = MAX_PAGE_ORDER
BATCH = 32  # blocks per message (see the module)


class FreePageHinting:
    def __init__(self, conn: Connection, link: TouchLink, mm: BuddyAllocator) -> None:
        self.conn, self.link, self.mm = conn, link, mm
        self.negotiated = False
        self.received = CMD_ID_STOP  # cmd_id_received_cache
        self.active = CMD_ID_STOP  # cmd_id_active
        self.blocks: list[int] = []  # free_page_list: first frames of held blocks
        self.batch: list[int] = []  # of those, not sent yet
        self.changed = asyncio.Event()
        self.runs = 0
        self.hinted_blocks = 0  # sent over the run
        self.shrunk_blocks = 0  # given back by the shrinker

    # ---- the host's word ---------------------------------------------------------------

    def adopt(self, acc: Accepted) -> None:
        """A new session: hinting only if both sides have it; blocks still held
        from the last one go back (it will never say DONE for them)."""
        self.negotiated = acc.balloon and F.has(acc.features, F.FREE_PAGE_HINT)
        self.received = CMD_ID_STOP
        self.active = -1  # a run still under way ends (its ids are the old session's)
        self.give_back(len(self.blocks))

    def on_config(self, msg: ConfigMsg) -> None:
        if msg.free_page_hint_cmd_id != self.received:
            self.received = msg.free_page_hint_cmd_id
            self.changed.set()

    # ---- report_free_page_func ---------------------------------------------------------

    async def run(self) -> None:
        while True:
            await self.changed.wait()
            self.changed.clear()
            if not self.negotiated:
                continue
            cmd = self.received
            if cmd == CMD_ID_DONE:
                self.give_back(len(self.blocks))
            elif cmd != CMD_ID_STOP and cmd != self.active:
                with contextlib.suppress(TransportError):
                    await self._report(cmd)

    async def _report(self, cmd: int) -> None:
        """virtio_balloon_report_free_page: the id, the blocks, STOP."""
        self.active = cmd
        self.runs += 1
        await self._send(HintMsg(True, cmd))
        while self.active == self.received:  # a new id or STOP ends the run
            pfn = self.mm.alloc(HINT_BLOCK_ORDER)
            if pfn < 0:
                break  # every free block of that order taken: -EINTR
            self.blocks.append(pfn)
            self.batch.append(pfn)
            if len(self.batch) >= BATCH:
                await self._flush()
            else:
                await asyncio.sleep(0)  # the workload runs between blocks
        await self._flush()
        await self._send(HintMsg(True, CMD_ID_STOP))

    async def _flush(self) -> None:
        batch, self.batch = self.batch, []
        if batch:
            await self._send(HintMsg(False, 0, batch, HINT_BLOCK_ORDER))
            self.hinted_blocks += len(batch)

    async def _send(self, msg: HintMsg) -> None:
        stream = self.conn.stream
        if stream is None or not self.conn.connected.is_set():
            raise TransportError("no stream")
        async with self.link.write_lock:
            await stream.write(msg)

    # ---- giving blocks back ------------------------------------------------------------

    def give_back(self, blocks: int) -> int:
        """return_free_pages_to_mm: up to ``blocks`` blocks to the allocator; pages."""
        n = min(blocks, len(self.blocks))
        if not n:
            return 0
        out, self.blocks = self.blocks[-n:], self.blocks[:-n]
        if self.batch:
            gone = set(out)
            self.batch = [p for p in self.batch if p not in gone]  # never sent now
        for p in out:
            self.mm.free(p, HINT_BLOCK_ORDER)
        return n << HINT_BLOCK_ORDER

    def on_oom(self) -> int:
        """The shrinker's first step (shrink_free_pages): a hinted block back."""
        if not self.blocks:
            return 0
        self.shrunk_blocks += 1
        return self.give_back(1)


def shrink(balloon: GuestBalloon, hints: FreePageHinting) -> int:
    """An allocation failed: hinted blocks go back first (the shrinker, with
    FREE_PAGE_HINT), then balloon pages (virtio_balloon_oom_notify, with
    DEFLATE_ON_OOM); pages freed. Either way it counts as one allocation stall."""
    freed = hints.on_oom() if hints.negotiated else 0
    if freed:
        balloon.alloc_stalls += 1
        return freed
    return balloon.on_oom()
