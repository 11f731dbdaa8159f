"""The guest's part in a snapshot (issue 25; host/migration.py runs it).

The host's config space asks, the guest answers on its stream:

* ``dirty_round`` set (or moved on): the guest sends every page written since
  its last log as (pfn, count) runs (DirtyLog) and starts a new log; 0 stops
  logging. A page counts as written when a block is allocated (its stamp) or
  freed (its poison). This plays KVM's dirty log (KVM_GET_DIRTY_LOG): the
  guest's RAM layer is the only writer of its RAM file.
* ``pause``: the vCPUs stop. The workload parks before its next operation (at
  its next tick or the end of a sleep), and, this being one event loop, nothing
  writes between the config arriving and the log taken for it: the log sent
  with ``paused`` is the last before the copy. Cleared: the workload goes on.
* ``check_image``: the guest reads the image (read-only, under the RAM file's
  rules: guest/ram.py ``open_image_file``) and checks every page it holds
  allocated against its own stamp (ImageChecked: pages checked and lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from guest.balloon.transport import TransportError
from guest.ram import SharedRam
from pagehint.errors import UsageError
from virtqueue.codec import Accepted, ConfigMsg, DirtyMsg, GuestMsg, ImageCheckedMsg

if TYPE_CHECKING:
    from guest.balloon.connection import Connection
    from guest.balloon.touch_link import TouchLink

log = logging.getLogger(__name__)

RUNS_PER_MESSAGE = 2048  # (pfn, count) runs a DirtyLog carries: ~30 KiB


def runs_of(bitmap: bytearray) -> list[tuple[int, int]]:
    """The set bytes of ``bitmap`` as (start, length) runs."""
    runs = []
    p = bitmap.find(1)
    while p >= 0:
        e = bitmap.find(0, p)
        e = len(bitmap) if e < 0 else e
        runs.append((p, e - p))
        p = bitmap.find(1, e)
    return runs


class MigrationAgent:
    def __init__(self, conn: Connection, link: TouchLink, nr_pages: int) -> None:
        self.conn, self.link, self.nr_pages = conn, link, nr_pages
        self.negotiated = False
        self.round = 0
        self.paused = False
        self.dirty: bytearray | None = None  # the log (None: not logging)
        self.checked_image = ""
        self.ram: SharedRam | None = None
        self.on_pause: list[Callable[[bool], None]] = []
        self.outbox: asyncio.Queue[GuestMsg] = asyncio.Queue()
        self.snapshots = 0

    def adopt(self, acc: Accepted) -> None:
        """A new session: a snapshot of the last one is over (resume, stop logging)."""
        self.negotiated = acc.migration
        self.round, self.dirty, self.checked_image = 0, None, ""
        self._pause(False)

    # ---- GuestMemory listeners -----------------------------------------------------------

    def on_write(self, pfn: int, order: int) -> None:
        d = self.dirty
        if d is not None:
            n = 1 << order
            d[pfn : pfn + n] = b"\x01" * n

    # ---- the host's word -----------------------------------------------------------------

    def on_config(self, msg: ConfigMsg) -> None:
        if not self.negotiated:
            return
        if msg.pause:
            self._pause(True)  # first: nothing writes after the log below
        if msg.dirty_round != self.round:
            self.round = msg.dirty_round
            if self.round == 0:
                self.dirty = None
            else:
                runs = runs_of(self.dirty) if self.dirty is not None else []
                self.dirty = bytearray(self.nr_pages)
                self._log(runs, paused=msg.pause)
                if self.round == 1:
                    self.snapshots += 1
        if not msg.pause:
            self._pause(False)
        if msg.check_image and msg.check_image != self.checked_image:
            self.checked_image = msg.check_image
            self.outbox.put_nowait(self._check(msg.check_image))
        elif not msg.check_image:
            self.checked_image = ""

    def _log(self, runs: list[tuple[int, int]], paused: bool) -> None:
        parts = [runs[i : i + RUNS_PER_MESSAGE] for i in range(0, len(runs), RUNS_PER_MESSAGE)]
        parts = parts or [[]]
        for i, part in enumerate(parts):
            more = i < len(parts) - 1
            self.outbox.put_nowait(DirtyMsg(self.round, part, paused and not more, more))

    def _pause(self, paused: bool) -> None:
        if paused != self.paused:
            self.paused = paused
            for cb in self.on_pause:
                cb(paused)

    def _check(self, image: str) -> ImageCheckedMsg:
        if self.ram is None:
            return ImageCheckedMsg(image, 0, 0, "this guest's RAM is not a file (sim)")
        try:
            checked, lost = self.ram.check_image(image)
        except (UsageError, OSError) as e:
            return ImageCheckedMsg(image, 0, 0, str(e)[:300])
        log.info(f"snapshot image checked: {checked} pages, {lost} lost")
        return ImageCheckedMsg(image, checked, lost)

    async def run(self) -> None:
        """Send what the host's config asked for, in order."""
        while True:
            msg = await self.outbox.get()
            stream = self.conn.stream
            if stream is None or not self.conn.connected.is_set():
                continue  # the session is gone: the host's snapshot ends without it
            with contextlib.suppress(TransportError):
                async with self.link.write_lock:
                    await stream.write(msg)
