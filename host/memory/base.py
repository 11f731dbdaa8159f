"""The interface between the balloon device and a memory backend."""

from __future__ import annotations

import abc
from collections.abc import Sequence


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

    @abc.abstractmethod
    def resident_pages_total(self) -> int:
        """Pages held for all guests together."""

    @abc.abstractmethod
    def attach(self, guest_id: str, nr_pages: int, page_size: int) -> GuestRam: ...

    def overhead_bytes(self) -> int:
        """Host memory the backend spends on its own books (sim: the ledgers), not
        the guests' frames; charged against the memory limit where it is not 0."""
        return 0

    def reclaim(self, want_pages: int) -> int:
        """Under host memory pressure, reclaim lazily freed pages; returns pages reclaimed."""
        return 0

    def close(self) -> None:  # noqa: B027 (optional hook, default: nothing to do)
        """The host stops."""
