"""The rest of virtio-balloon on the host (issue 24): the target, the inflate and
deflate queues, and the stats queue, for a session that negotiated ``balloon``.

As QEMU's and Firecracker's devices: the host sets a target (``num_pages`` in
the config space; here a Used with ``config`` set on the guest's stream); the
guest answers with pages on the inflate queue, which the host discards, and on
the deflate queue when it takes pages back; ``actual`` is what the guest says
its balloon holds. The host does not offer VIRTIO_BALLOON_F_MUST_TELL_HOST: a
deflated page is only counted (nothing is undone on it), so the guest may use
it before the host has answered, as the virtio spec allows without that bit.
The host checks what a guest sends it as it checks a chain: a page outside
the guest's RAM, twice in one message, inflated while already in the balloon
or deflated while not in it is refused with the message, and nothing of it is
discarded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from host.balloon_state import ARRAY_PFNS_MAX, STAT_NAMES, HostBalloon
from host.sessions import Session, SessionTable, of_guest, remember
from virtqueue import codec
from virtqueue.codec import UsedMsg
from virtqueue.contract import MAX_GUEST_RAM, PAGE_SIZE


def pages_problem(b: HostBalloon, nr_pages: int, inflate: bool, pfns: Sequence[int]) -> str:
    """What is wrong with a Pages message ("" when nothing): the reason it is refused."""
    if not pfns:
        return "empty"
    if len(pfns) > ARRAY_PFNS_MAX:
        return "too_many_pages"
    if len(set(pfns)) != len(pfns):
        return "duplicate"
    if any(not 0 <= p < nr_pages for p in pfns):
        return "out_of_range"
    held = b.pages
    if inflate and any(p in held for p in pfns):
        return "already_inflated"
    if not inflate and any(p not in held for p in pfns):
        return "not_inflated"
    return ""


def handle_pages(s: Session, msg: codec.PagesMsg) -> UsedMsg:
    """An inflate (discard the frames; they are the balloon's now) or a deflate
    (count them out of the balloon); refused whole on any broken rule."""
    b = s.balloon
    nr_pages = s.ram_bytes // PAGE_SIZE
    problem = "no_balloon" if b is None else pages_problem(b, nr_pages, msg.inflate, msg.pfns)
    if b is None or problem:
        return UsedMsg(
            msg.id,
            status=codec.REFUSED,
            reason=problem,
            detail=f"{'inflate' if msg.inflate else 'deflate'} of {len(msg.pfns)} pages refused",
            resident_bytes=s.ram.resident_pages() * PAGE_SIZE,
        )
    discarded = 0
    if msg.inflate:
        try:
            # (pfn, pages) runs, ascending: the backend coalesces neighbours.
            s.ram.discard([(p, 1) for p in sorted(msg.pfns)])
        except OSError as e:
            # Counted, never fatal; the pages are not the balloon's then.
            return UsedMsg(
                msg.id,
                status=codec.DISCARD_FAILED,
                reason="discard_failed",
                detail=f"inflate: discard failed: {e.strerror or e}",
                errno=e.errno or 0,
                resident_bytes=s.ram.resident_pages() * PAGE_SIZE,
            )
        b.pages.update(msg.pfns)
        b.inflated += len(msg.pfns)
        discarded = len(msg.pfns)
    else:
        b.pages.difference_update(msg.pfns)
        b.deflated += len(msg.pfns)
    # The host's own count, not the guest's word (Pages.actual_pages): what it
    # holds in the balloon is what it discarded and was not told back.
    b.actual_pages = len(b.pages)
    s.last_seen = time.monotonic()
    return UsedMsg(
        msg.id, discarded_pages=discarded, resident_bytes=s.ram.resident_pages() * PAGE_SIZE
    )


# Most (tag, value) pairs kept from one stats buffer: the 16 tags Linux defines,
# with room for more (an unknown tag is kept by its number).
MAX_STATS = 64


def take_stats(s: Session, msg: codec.StatsMsg) -> str:
    """The guest's stats buffer, kept by tag name; "" or why it was refused."""
    if s.balloon is None:
        return "no_balloon"
    if len(msg.tags) != len(msg.values):
        return "malformed"
    if len(msg.tags) > MAX_STATS:
        return "too_many_stats"
    s.balloon.stats = {
        STAT_NAMES.get(tag, f"tag-{tag}"): int(value)
        for tag, value in zip(msg.tags, msg.values, strict=False)
    }
    s.balloon.stats_at = time.monotonic()
    s.last_seen = s.balloon.stats_at
    return ""


def state(s: Session) -> codec.BalloonState:
    b = s.balloon or HostBalloon()
    age = 0 if not b.stats_at else max(1, int((time.monotonic() - b.stats_at) * 1000))
    return codec.BalloonState(
        guest_id=s.guest_id,
        balloon=s.balloon is not None,
        target_bytes=b.target_pages * PAGE_SIZE,
        actual_bytes=b.actual_pages * PAGE_SIZE,
        stats=dict(b.stats),
        stats_age_ms=age,
        inflated_pages=b.inflated,
        deflated_pages=b.deflated,
    )


def set_target(t: SessionTable, guest_id: str, target_bytes: int) -> Session | None:
    """A live guest's balloon target, at most its RAM (kept for its later sessions
    on this host too), told at once on its stream; its session, or None when it
    has none with the balloon (nothing is kept then)."""
    s = of_guest(t, guest_id)
    if s is None or s.balloon is None:
        return None
    pages = min(target_bytes, MAX_GUEST_RAM) // PAGE_SIZE
    s.balloon.target_pages = min(pages, s.nr_pages)
    s.balloon.told_pages = -1  # told again even if unchanged, as QEMU notifies
    remember(t.targets, guest_id, s.balloon.target_pages)
    s.wake()
    return s
