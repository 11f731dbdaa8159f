"""One session's balloon as the host keeps it (host/balloon.py acts on it)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

# Most frames in one Pages message: the Linux driver's VIRTIO_BALLOON_ARRAY_PFNS_MAX
# (drivers/virtio/virtio_balloon.c), the size of its pfns array.
ARRAY_PFNS_MAX = 256

# The stats queue's tags, include/uapi/linux/virtio_balloon.h (VIRTIO_BALLOON_S_*),
# by the names Linux's driver gives them (virtio_balloon_stat_names).
STAT_NAMES = {
    0: "swap-in",
    1: "swap-out",
    2: "major-faults",
    3: "minor-faults",
    4: "free-memory",
    5: "total-memory",
    6: "available-memory",
    7: "disk-caches",
    8: "hugetlb-allocations",
    9: "hugetlb-failures",
    10: "oom-kills",
    11: "alloc-stalls",
    12: "async-scans",
    13: "direct-scans",
    14: "async-reclaims",
    15: "direct-reclaims",
}


@dataclass
class HostBalloon:
    """One session's balloon, as the host sees it."""

    target_pages: int = 0
    told_pages: int = -1  # the target last sent to the guest (-1: none yet)
    actual_pages: int = 0  # what the guest last said (Pages.actual_pages)
    pages: set[int] = field(default_factory=set)  # frames in the balloon
    inflated: int = 0  # pages taken on the inflate queue, ever
    deflated: int = 0  # pages told on the deflate queue, ever
    stats: dict[str, int] = field(default_factory=dict)
    stats_at: float = 0.0  # monotonic time they came (0: none yet)
    hint: HintRuns = field(default_factory=lambda: HintRuns())
    # Snapshots (issue 25): set when the guest negotiated migration.
    snap: SnapLink | None = None
    told_config: tuple[int, int, int, bool, str] | None = None  # the last config sent

    def config(self) -> tuple[int, int, int, bool, str]:
        """The config space as the guest should see it now (BalloonConfig)."""
        s = self.snap
        if s is None:
            return (self.target_pages, self.hint.host_cmd, 0, False, "")
        return (self.target_pages, self.hint.host_cmd, s.dirty_round, s.pause, s.check_image)


# free_page_hint_cmd_id's reserved values (include/uapi/linux/virtio_balloon.h).
CMD_ID_STOP = 0
CMD_ID_DONE = 1


@dataclass
class SnapLink:
    """What a snapshot asks of its guest (the config) and what the guest answered."""

    dirty_round: int = 0
    pause: bool = False
    check_image: str = ""
    # Dirty logs by round: (pfn, count) runs, and whether the round's log is whole.
    logs: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    log_pages: dict[int, int] = field(default_factory=dict)  # pages in each round's log
    complete: set[int] = field(default_factory=set)
    paused_in: int = 0  # the round whose log the guest sent paused
    checked: tuple[str, int, int, str] | None = None  # (image, checked, lost, error)
    busy: bool = False  # a snapshot runs
    answered: asyncio.Event = field(default_factory=asyncio.Event)  # the guest said more


@dataclass
class HintRuns:
    """One session's free page hinting (FREE_PAGE_HINT), as Firecracker's
    HintingState keeps it."""

    host_cmd: int = CMD_ID_STOP  # the command id the host last set
    last_cmd_id: int = CMD_ID_STOP  # the last run's id (the next is one more)
    guest_cmd: int | None = None  # the command id the guest last sent
    guest_run: int = CMD_ID_STOP  # the last run id it sent (its STOP ends that run)
    acknowledge_on_stop: bool = True
    hinted_pages: int = 0  # pages hinted under the current run's id
    blocks: set[int] = field(default_factory=set)  # their first frames
    runs: int = 0
    ignored: int = 0  # blocks that came for no run, or for an old one
