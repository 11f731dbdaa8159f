"""The guest's memory model, shaped like x86-64 Linux: pages, zones, free areas, buddy."""

from guest.mm.buddy import AllocatorError, BuddyAllocator
from guest.mm.constants import MAX_ORDER, NR_ORDERS, PAGE_SHIFT, PAGE_SIZE
from guest.mm.zone import FreeArea, Zone

__all__ = [
    "MAX_ORDER",
    "NR_ORDERS",
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "AllocatorError",
    "BuddyAllocator",
    "FreeArea",
    "Zone",
]
