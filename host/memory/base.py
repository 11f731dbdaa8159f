"""The interface between the balloon device and a memory backend."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import NamedTuple

from host.memory.hostmem import HostMemory, TouchOutcome


class Evictions(NamedTuple):
    runs: list[tuple[int, int]]  # (pfn, count) the host no longer holds
    ack_id: int  # the guest acknowledges this before their bytes move (0: nothing to)


class GuestRam(abc.ABC):
    """One guest's RAM as the host holds it."""

    guest_id: str
    nr_pages: int
    page_size: int

    @abc.abstractmethod
    def discard(self, ranges: Sequence[tuple[int, int]]) -> int:
        """Discard page ranges (pfn, npages); returns pages actually released."""

    @abc.abstractmethod
    def touched(self, runs: Sequence[tuple[int, int]]) -> int:
        """The guest touched frames again (pfn, count); returns pages brought back."""

    def touch(self, runs: Sequence[tuple[int, int]]) -> TouchOutcome:
        """``touched`` with what it cost: a backend without a host memory model
        zero-fills every frame it brings back (minor faults), at no delay."""
        brought = self.touched(runs)
        return TouchOutcome(brought, brought, 0, 0, 0.0)

    def take_evicted(self) -> Evictions:
        """Runs the host evicted since last asked, to tell the guest (the model only),
        and the id the guest must acknowledge before their bytes move (0: none)."""
        return Evictions([], 0)

    def acknowledged(self, evict_id: int) -> int | None:
        """The guest took in Notices up to ``evict_id``: move what they named out of
        its RAM (real bytes only); returns frames moved, None for an id never issued
        (a guest's bug: counted, nothing moved)."""
        return None

    def swapped_pages(self) -> int:
        return 0

    @property
    def killed(self) -> str:
        """Why the host's OOM killer took this guest ("": it did not)."""
        return ""

    def faults(self) -> tuple[int, int]:
        """(major, minor) faults so far (the host memory model only)."""
        return 0, 0

    def stall_seconds(self) -> float:
        """Seconds the guest's touches waited on the host's swap (the model only)."""
        return 0.0

    @abc.abstractmethod
    def resident_pages(self) -> int: ...

    @abc.abstractmethod
    def lazily_free_pages(self) -> int: ...

    @property
    def measured_by_kernel(self) -> bool:
        return False

    @property
    def shm_path(self) -> str:
        return ""

    def file_fd(self) -> int:
        """The descriptor of the file holding the guest's RAM (-1: none, sim)."""
        return -1

    def release(self) -> None:  # noqa: B027 (optional hook, default: nothing to do)
        """The session ended: give everything back."""


class MemoryBackend(abc.ABC):
    name: str
    discard_mode: str
    # Host memory for all guests, in pages (None: unlimited).
    capacity_pages: int | None = None
    # Lazily freed pages reclaimed under pressure (only MADV_FREE-like backends reclaim).
    reclaimed: int = 0
    # Files a previous, killed host left behind and this one removed at start.
    orphans_removed: tuple[str, ...] = ()
    # The host's memory model (--host-memory; None: the host holds what guests touch).
    model: HostMemory | None = None

    @abc.abstractmethod
    def resident_pages_total(self) -> int:
        """Pages held for all guests together."""

    @abc.abstractmethod
    def attach(
        self, guest_id: str, nr_pages: int, page_size: int, host_memory: bool = False
    ) -> GuestRam:
        """A guest's RAM; ``host_memory``: the guest follows the host's memory model
        (its frames may be swapped: only with a model, see host/memory/hostmem.py)."""

    def overhead_bytes(self) -> int:
        """Host memory the backend spends on its own books (sim: the ledgers), not
        the guests' frames; charged against the memory limit where it is not 0."""
        return 0

    def reclaim(self, want_pages: int) -> int:
        """Under host memory pressure, reclaim lazily freed pages; returns pages reclaimed."""
        return 0

    def close(self) -> None:  # noqa: B027 (optional hook, default: nothing to do)
        """The host stops."""
