"""Constants of the emulated machine: x86-64 Linux defaults.

Page size, orders and RAM bounds are the wire contract's (virtqueue/contract.py):
guest and host agree on them, so they are defined there, once.
"""

from virtqueue.contract import (
    MAX_GUEST_RAM,
    MAX_ORDER,
    MIN_GUEST_RAM,
    PAGE_SHIFT,
    PAGE_SIZE,
    PAGEBLOCK_ORDER,
)

__all__ = ["MAX_ORDER", "PAGEBLOCK_ORDER", "PAGE_SHIFT", "PAGE_SIZE"]

NR_ORDERS = MAX_ORDER + 1
MAX_BLOCK_PAGES = 1 << MAX_ORDER

# Zone boundaries in bytes (x86-64): DMA below 16 MiB, DMA32 below 4 GiB, Normal above.
DMA_LIMIT = 16 << 20
DMA32_LIMIT = 4 << 30

MIN_RAM = MIN_GUEST_RAM
MAX_RAM = MAX_GUEST_RAM
# RAM must be a whole number of top-order blocks so every buddy lies inside RAM.
RAM_ALIGN = MAX_BLOCK_PAGES * PAGE_SIZE

# Migratetypes (include/linux/mmzone.h): the free lists each order keeps, and the
# pageblock types. Only the three that get per-CPU lists are modelled (no CMA,
# HighAtomic or Isolate pageblocks).
MIGRATE_UNMOVABLE = 0
MIGRATE_MOVABLE = 1
MIGRATE_RECLAIMABLE = 2
MIGRATE_PCPTYPES = 3
MIGRATETYPE_NAMES = ("Unmovable", "Movable", "Reclaimable")

# Orders above this are "costly" (include/linux/mmzone.h): they get no per-CPU
# low-order list, and failing them calls no OOM notifier.
PAGE_ALLOC_COSTLY_ORDER = 3

# Per-page flag byte. A block's first page (its head) holds STATE | order; the other
# pages of the block hold 0. One byte compare answers the kernel's
# "PageBuddy(buddy) && buddy_order(buddy) == order".
TAIL = 0x00
FREE = 0x20
ISOLATED = 0x40
ALLOCATED = 0x80
# On a per-CPU list: free to the page allocator, but not in the buddy (not
# PageBuddy: a buddy does not merge with it, reporting does not see it).
PCP = FREE | ISOLATED
REPORTED = 0x10  # PageReported: only ever set together with FREE
ORDER_MASK = 0x0F
STATE_MASK = 0xE0
