"""Snapshots by pre-copy, with free page hints (issue 25).

What QEMU's RAM migration does (migration/ram.c), on the shm backend's RAM file,
into an image file beside it:

- A bitmap of pages to send, all set at the start (ram_list_init_bitmaps: the
  first pass sends everything).
- Round 1 copies every set page while the guest runs, 4 MiB at a time at
  QEMU's default max-bandwidth (128 MiB/s), letting the guest's messages in
  between. With hints, a free page hinting run is
  started first (``host/hints.py``, as Firecracker's: the guest's STOP is
  answered with DONE); every hinted block whose pages are still to be sent is
  cleared from the bitmap (qemu_guest_free_page_hint), and counted skipped.
- Each later round first takes the guest's dirty log (migration_bitmap_sync:
  the pages written since the last sync are set again), then copies what is set.
  A hinted page the guest wrote after its hint is in that log: it is copied
  again. ``unsafe_trust_hints`` drops that: a page once hinted is never copied
  again (the race Firecracker's users hit: hints taken as final while the guest
  reuses the pages).
- When what is left would take no longer than the downtime limit at the
  bandwidth measured so far (migration_iteration_run: pending <= threshold =
  bandwidth × downtime-limit, 300 ms by default in QEMU's migration
  parameters), or after ``max_rounds``, the guest is paused, its last dirty log
  taken, the rest copied: the downtime is that last round.
- The guest then checks the image against its own stamps (every page it holds
  allocated must read back with its own stamp) and is resumed.

Departures, named: QEMU sends zero pages as a flag (counted here, still copied);
KVM keeps the dirty log, here the guest's RAM layer does (it is the only writer
of its RAM file: so a guest under the host memory model, whose frames the host
swaps, is refused); the link is a pace (sleeps between chunks), not a network,
and the threshold's bandwidth is that pace (or this machine's copy rate, if
slower), not QEMU's windowed measure. The hinting run is Firecracker's: started
once, beside the first pass, its STOP answered with DONE at once, so the guest
uses its hinted blocks again during the later rounds (the dirty log re-sends
what it writes); QEMU's notifier stops hinting before each sync, starts it again
after, and says DONE only at the end. ``max_rounds`` (default 30) is pagehint's
own bound: QEMU has none, and a guest that dirties faster than the copy never
converges without auto-converge.

``unsafe_trust_hints`` is not the race the guest's shrinker makes (a hinted
block reused before the host saw it: harmless here, as nothing is discarded);
it is a snapshot that takes hints as final and ignores the dirty log for hinted
pages: what Firecracker users hit when a snapshot trusts hints the guest has
since reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from host import hints
from host.balloon_state import SnapLink
from host.sessions import Session
from virtqueue import codec
from virtqueue.contract import MAX_ORDER, PAGE_SIZE

DOWNTIME_LIMIT = 0.3  # QEMU's downtime-limit default: 300 ms
# QEMU's max-bandwidth default (migration/options.c MAX_THROTTLE: 128 MiB/s): the
# link the pages go over, paced here.
BANDWIDTH = 128 << 20
MAX_ROUNDS = 30  # pagehint's own bound (see the module)
MAX_ROUNDS_ASKED = 1000  # the most a caller may ask for
COPY_CHUNK_PAGES = 1024  # 4 MiB between looks at the guest's messages
ANSWER_TIMEOUT = 30.0  # seconds a guest has to send a round's log or its check
SESSION_CHECK = 0.5  # seconds between looks at whether the guest's session ended
MAX_LOG_RUNS = 1 << 20  # runs kept per round: a guest cannot grow the host's books
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")  # as the RAM file's name (host/memory/shm.py)


class SnapshotError(Exception):
    """The snapshot could not be made (its text says why, in one line)."""


def take_snapshot_answer(s: Session, msg: codec.DirtyMsg | codec.ImageCheckedMsg) -> str:
    """A dirty log or an image check from the guest; "" or why it was refused."""
    snap = s.balloon.snap if s.balloon is not None else None
    if snap is None or not snap.busy:
        return "no_snapshot"
    if isinstance(msg, codec.ImageCheckedMsg):
        snap.checked = (msg.image, msg.pages_checked, msg.pages_lost, msg.error)
        snap.answered.set()
        return ""
    if msg.round != snap.dirty_round or msg.round in snap.complete:
        return "dirty_round"
    runs = snap.logs.setdefault(msg.round, [])
    if any(c <= 0 or p < 0 or p + c > s.nr_pages for p, c in msg.runs):
        return "out_of_range"
    if len(runs) + len(msg.runs) > MAX_LOG_RUNS:
        return "too_many_runs"
    # The runs of one round are disjoint pages of this guest: more than its RAM in
    # all is a lie, and would make the host's marking work without bound.
    pages = snap.log_pages.get(msg.round, 0) + sum(c for _, c in msg.runs)
    if pages > s.nr_pages:
        return "dirty_log_too_big"
    snap.log_pages[msg.round] = pages
    runs.extend(msg.runs)
    if not msg.more:
        snap.complete.add(msg.round)
        if msg.paused:
            snap.paused_in = msg.round
        snap.answered.set()
    return ""


@dataclass
class Copier:
    """The pages still to send, and what sending them took."""

    ram_fd: int
    image_fd: int
    to_send: bytearray
    trusted: bytearray  # unsafe mode: hinted once, never sent again
    sent_once: bytearray  # sent at least once
    copied: int = 0
    zero: int = 0
    copy_seconds: float = 0.0

    async def copy_all(
        self, before: Callable[[], None] | None = None, alive: Callable[[], bool] | None = None
    ) -> None:
        """Send every page still set, a chunk at a time at most BANDWIDTH, the
        guest's messages let in between chunks (``before`` runs ahead of each:
        hints may clear pages not sent yet)."""
        n = len(self.to_send)
        for base in range(0, n, COPY_CHUNK_PAGES):
            if alive is not None and not alive():
                raise SnapshotError("the guest's session ended during the snapshot")
            if before is not None:
                before()
            sent = self.copied
            t0 = time.perf_counter()
            self.copy_chunk(base, min(n, base + COPY_CHUNK_PAGES))
            # The link's pace: what was sent takes its time at BANDWIDTH.
            due = (self.copied - sent) * PAGE_SIZE / BANDWIDTH - (time.perf_counter() - t0)
            await asyncio.sleep(max(0.0, due))

    def copy_chunk(self, lo: int, hi: int) -> None:
        t0 = time.perf_counter()
        ts = self.to_send
        p = ts.find(1, lo, hi)
        zeros = bytes(PAGE_SIZE)
        while p >= 0:
            e = ts.find(0, p, hi)
            e = hi if e < 0 else e
            data = os.pread(self.ram_fd, (e - p) * PAGE_SIZE, p * PAGE_SIZE)
            os.pwrite(self.image_fd, data, p * PAGE_SIZE)
            self.copied += e - p
            self.sent_once[p:e] = b"\x01" * (e - p)
            self.zero += sum(
                1 for i in range(0, len(data), PAGE_SIZE) if data[i : i + PAGE_SIZE] == zeros
            )
            ts[p:e] = bytes(e - p)
            p = ts.find(1, e, hi)
        self.copy_seconds += time.perf_counter() - t0

    def mark_dirty(self, runs: list[tuple[int, int]]) -> None:
        ts, trusted = self.to_send, self.trusted
        for p, c in runs:
            if trusted[p : p + c].count(1) == 0:
                ts[p : p + c] = b"\x01" * c
            else:  # unsafe: the trusted (hinted) pages stay unsent
                for q in range(p, p + c):
                    if not trusted[q]:
                        ts[q] = 1

    def pending(self) -> int:
        return self.to_send.count(1)

    def bandwidth(self) -> float:
        """Pages a second: the link's, or this machine's copy rate if slower."""
        measured = self.copied / self.copy_seconds if self.copy_seconds > 0 else float("inf")
        return min(BANDWIDTH / PAGE_SIZE, measured)


async def _answer(s: Session, snap: SnapLink, ready: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until ``ready()`` holds; each answer of the guest wakes us."""
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while not ready():
        if s.ended:
            raise SnapshotError(f"guest {s.guest_id}: its session ended during the snapshot")
        left = deadline - time.monotonic()
        if left <= 0:
            raise SnapshotError(f"guest {s.guest_id}: no {what} within {ANSWER_TIMEOUT:g} s")
        snap.answered.clear()
        # Bounded by SESSION_CHECK too: a session that ends wakes nothing here.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(snap.answered.wait(), min(left, SESSION_CHECK))


async def _sync(s: Session, snap: SnapLink, copier: Copier, pause: bool = False) -> None:
    """migration_bitmap_sync: a new round's log asked for, taken into the bitmap."""
    snap.dirty_round += 1
    snap.pause = pause or snap.pause
    r = snap.dirty_round
    s.wake()
    await _answer(
        s, snap, lambda: r in snap.complete and (not pause or snap.paused_in == r), "dirty log"
    )
    copier.mark_dirty(snap.logs.pop(r, []))


def _take_hints(s: Session, copier: Copier, seen: set[int], unsafe: bool) -> None:
    """Clear the pages of hinted blocks not sent yet (qemu_guest_free_page_hint);
    ``unsafe``: and never send them again, whatever the dirty log says."""
    assert s.balloon is not None
    h = s.balloon.hint
    new = h.blocks - seen
    size = 1 << MAX_ORDER
    for p in new:
        copier.to_send[p : p + size] = bytes(size)
        if unsafe:
            copier.trusted[p : p + size] = b"\x01" * size
    seen |= new


def _check(s: Session, opts: codec.SnapshotOptions) -> SnapLink:
    """The session's snapshot link, if a snapshot of it can be made now."""
    b = s.balloon
    if b is None or b.snap is None:
        raise SnapshotError(
            f"guest {s.guest_id}: its session cannot be snapshot (an older guest, or not shm)"
        )
    if opts.unsafe_trust_hints and not opts.use_hints:
        raise SnapshotError("unsafe_trust_hints needs use_hints")
    if opts.use_hints and not hints.hinting(s):
        raise SnapshotError(
            f"guest {s.guest_id}: no free page hinting (host without --free-page-hint)"
        )
    if b.snap.busy:
        raise SnapshotError(f"guest {s.guest_id}: a snapshot of it is already running")
    if s.ram.file_fd() < 0:
        raise SnapshotError("snapshots need the shm backend")
    if s.host_memory:
        # The host itself moves this guest's frames (swap) and its accesses wait on
        # them: neither is in the guest's dirty log (see the module).
        raise SnapshotError(
            f"guest {s.guest_id}: snapshots of a guest under the host memory model "
            "(--host-memory) are not supported"
        )
    return b.snap


async def _precopy(s: Session, snap: SnapLink, copier: Copier, opts: codec.SnapshotOptions) -> int:
    """The rounds while the guest runs: the bulk stage (with hints), then dirty
    rounds until what is left fits the downtime; the rounds made."""
    seen: set[int] = set()
    await _sync(s, snap, copier)  # the log starts: writes from now on are seen
    copier.to_send[:] = b"\x01" * len(copier.to_send)  # the bulk stage sends everything
    before = None
    if opts.use_hints:
        hints.start(s, acknowledge_on_stop=True)
        # Hints and the copy race as in QEMU: each chunk takes the hints come so far.
        before = lambda: _take_hints(s, copier, seen, opts.unsafe_trust_hints)  # noqa: E731
    await copier.copy_all(before, alive=lambda: not s.ended)
    rounds = 1
    while rounds < (opts.max_rounds or MAX_ROUNDS):
        await _sync(s, snap, copier)
        rounds += 1
        if copier.pending() < copier.bandwidth() * DOWNTIME_LIMIT:
            break
        await copier.copy_all(alive=lambda: not s.ended)
    return rounds


async def _checked(s: Session, snap: SnapLink, image: Path) -> tuple[int, int]:
    """The guest's check of the image: (pages checked, pages lost)."""
    snap.checked = None
    snap.check_image = str(image)
    s.wake()
    await _answer(s, snap, lambda: snap.checked is not None, "image check")
    assert snap.checked is not None
    _, checked, lost, error = snap.checked
    if error:
        # The guest's words: one escaped line, bounded (they reach the admin).
        said = error[:200].encode("unicode_escape", "backslashreplace").decode("ascii")
        raise SnapshotError(f"guest {s.guest_id}: could not check the image: {said}")
    return checked, lost


async def run_snapshot(
    s: Session, opts: codec.SnapshotOptions, folder: Path
) -> codec.SnapshotResult:
    """One snapshot of ``s``'s RAM into an image in ``folder`` (see the module)."""
    snap = _check(s, opts)
    image = folder / f"{_SAFE.sub('_', s.guest_id)[:64]}-{secrets.token_hex(4)}.img"
    image_fd = os.open(image, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    # Its own descriptor of the RAM file: if the session ends and closes its own,
    # the number is never another guest's file to this copy.
    ram_fd = os.dup(s.ram.file_fd())
    snap.busy = True
    t0 = time.monotonic()
    try:
        n = s.nr_pages
        os.ftruncate(image_fd, n * PAGE_SIZE)
        copier = Copier(ram_fd, image_fd, bytearray(n), bytearray(n), bytearray(n))
        rounds = await _precopy(s, snap, copier, opts)
        # The last round: the guest paused, its last log, the rest.
        t_pause = time.monotonic()
        await _sync(s, snap, copier, pause=True)
        await copier.copy_all(alive=lambda: not s.ended)
        downtime = time.monotonic() - t_pause  # the guest's pause: the copy, not the disk
        os.fsync(image_fd)
        checked, lost = await _checked(s, snap, image)
        assert s.balloon is not None
        return codec.SnapshotResult(
            guest_id=s.guest_id,
            pages_copied=copier.copied,
            pages_skipped=copier.sent_once.count(0),
            zero_pages=copier.zero,
            rounds=rounds + 1,
            downtime_us=round(downtime * 1e6),
            total_us=round((time.monotonic() - t0) * 1e6),
            pages_checked=checked,
            pages_lost=lost,
            hinted_pages=s.balloon.hint.hinted_pages if opts.use_hints else 0,
            image=str(image),
        )
    finally:
        os.close(image_fd)
        os.close(ram_fd)
        with contextlib.suppress(OSError):
            image.unlink()  # the check is done: the image is not kept
        snap.busy = snap.pause = False
        snap.dirty_round, snap.check_image = 0, ""
        snap.logs.clear()
        snap.complete.clear()
        s.wake()
