"""What a balloon controller sees and what it answers.

A controller is called every ``period`` seconds with a ``HostView``: the host's
memory and swap (the memory model's books, as /proc/meminfo and /proc/vmstat
would show them) and, for every guest whose session negotiated the balloon, its
RAM, its balloon's target and actual size, its last stats (the stats queue, by
Linux's names) and what the host knows of it (resident, swapped, the seconds its
touches waited on swap). It answers, for the guests it wants to change, the
memory each should *have*: as QEMU's ``balloon`` command (its ``value`` is the
guest's new RAM size), oVirt MOM's ``balloon_target`` and Proxmox's
``mon_cmd(balloon)`` take it. The host turns that into the balloon's size
(``num_pages`` = RAM − memory). Guests left out keep their target.

``decide`` runs in a worker thread on a snapshot, so a slow or broken controller
cannot stall the host; what it answers is checked (host/control/runner.py).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class GuestView:
    """One guest with the balloon, at the moment of the view."""

    guest_id: str
    ram_bytes: int  # its RAM: the most memory it can have (QEMU's maxmem)
    # The least memory it should be left with (--balloon-min; 0: none set). The
    # controllers' sources each treat it their own way (oVirt's guaranteed memory,
    # Proxmox's "minimum memory", senpai's --min-size).
    min_bytes: int
    target_bytes: int  # the balloon's target size (num_pages, in bytes)
    actual_bytes: int  # what the balloon holds now (QEMU's "actual", as a balloon)
    stats: Mapping[str, int] = field(default_factory=dict)  # the stats queue's last
    stats_age_s: float | None = None  # seconds since they came (None: none yet)
    resident_bytes: int = 0  # the host holds for it
    swapped_bytes: int = 0  # in the host's swap
    major_faults: int = 0  # its frames read back from swap, ever
    stall_seconds: float = 0.0  # its touches waited on swap I/O, ever

    @property
    def memory_bytes(self) -> int:
        """What the guest has now: RAM less the balloon (MOM's balloon_cur,
        Proxmox's and QMP query-balloon's ``actual``)."""
        return self.ram_bytes - self.actual_bytes

    @property
    def target_memory_bytes(self) -> int:
        """What the guest is asked to have: RAM less the balloon's target."""
        return self.ram_bytes - self.target_bytes

    @property
    def free_bytes(self) -> int | None:
        """The guest's free memory from its stats (free-memory), None if not sent."""
        return self.stats.get("free-memory")


@dataclass(frozen=True)
class HostView:
    """The host's memory at one moment (the model's books: host/memory/hostmem.py)."""

    t: float  # seconds since the controller started
    memory_bytes: int  # for guests and their VMMs (MemTotal)
    used_bytes: int  # held: guests' frames, lazily freed ones still held, VMM overhead
    lazy_bytes: int  # of those, lazily freed (MADV_FREE): dropped without I/O
    swap_bytes: int
    swap_used_bytes: int
    swap_ins: int  # pages read back from swap, ever (/proc/vmstat pswpin)
    swap_outs: int  # pages written to swap, ever (pswpout)
    guests: tuple[GuestView, ...] = ()

    @property
    def free_bytes(self) -> int:
        """MemFree: memory nothing holds."""
        return max(0, self.memory_bytes - self.used_bytes)

    @property
    def available_bytes(self) -> int:
        """MemAvailable: free plus lazily freed frames (mm/swap.c lru_lazyfree puts
        them on the inactive file list, which si_mem_available counts; its
        low-watermark discount is not modelled)."""
        return self.free_bytes + self.lazy_bytes


class Controller(abc.ABC):
    """A balloon controller (see the module). Built with no arguments: a
    controller of your own takes its settings from its own environment or file."""

    name: ClassVar[str] = ""
    # Seconds between calls of decide().
    period: float = 10.0

    @abc.abstractmethod
    def decide(self, host: HostView) -> Mapping[str, int]:
        """Guest id -> the memory (bytes) that guest should have; others unchanged."""
