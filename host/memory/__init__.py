"""Backends that hold a guest's RAM on the host."""

from host.memory.base import GuestRam, MemoryBackend
from host.memory.sim import SimBackend

__all__ = ["GuestRam", "MemoryBackend", "SimBackend"]
