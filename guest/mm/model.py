"""Which of the kernel allocator's rules a BuddyAllocator runs.

The allocator reads these seven settings from any object that has them: the
guest's validated MemoryConfig (pagehint/config.py, where each default's source
is written) or ``AllocatorModel`` here. The allocator imports nothing above it,
so the settings' shape is stated here, once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class MemoryModel(Protocol):
    @property
    def pcp(self) -> bool: ...
    @property
    def thp(self) -> bool: ...
    @property
    def cpus(self) -> int: ...
    @property
    def layout(self) -> str: ...
    @property
    def watermarks(self) -> bool: ...
    @property
    def min_free_kbytes(self) -> int | None: ...
    @property
    def kernel_at(self) -> int: ...


@dataclass(frozen=True)
class AllocatorModel:
    """The kernel model, as MemoryConfig's defaults (the reference 6.1 guest's)."""

    pcp: bool = True
    thp: bool = True
    cpus: int = 2
    layout: str = "auto"
    watermarks: bool = True
    min_free_kbytes: int | None = None
    kernel_at: int = 16 << 20  # CONFIG_PHYSICAL_START: no KASLR
