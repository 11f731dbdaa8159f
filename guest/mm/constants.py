"""Constants of the emulated machine: x86-64 Linux defaults."""

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT  # 4 KiB
# The kernel's MAX_ORDER (called MAX_PAGE_ORDER since 6.8): largest block is 2**10 pages (4 MiB).
MAX_ORDER = 10
NR_ORDERS = MAX_ORDER + 1
MAX_BLOCK_PAGES = 1 << MAX_ORDER
# pageblock_order on x86-64 with THP: 2 MiB, the default reporting/hinting order.
PAGEBLOCK_ORDER = 9

# Zone boundaries in bytes (x86-64): DMA below 16 MiB, DMA32 below 4 GiB, Normal above.
DMA_LIMIT = 16 << 20
DMA32_LIMIT = 4 << 30

MIN_RAM = 64 << 20
MAX_RAM = 64 << 30
# RAM must be a whole number of top-order blocks so every buddy lies inside RAM.
RAM_ALIGN = MAX_BLOCK_PAGES * PAGE_SIZE

# Per-page flag byte. A block's first page (its head) holds STATE | order; the other
# pages of the block hold 0. One byte compare answers the kernel's
# "PageBuddy(buddy) && buddy_order(buddy) == order".
TAIL = 0x00
FREE = 0x20
ISOLATED = 0x40
ALLOCATED = 0x80
REPORTED = 0x10  # PageReported: only ever set together with FREE
ORDER_MASK = 0x0F
STATE_MASK = 0xE0
