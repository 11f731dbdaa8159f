"""The numbers both ends of the virtqueue agree on, defined once.

A chain's ranges are (pfn, order) blocks of PAGE_SIZE pages; an order is at
most MAX_ORDER; a guest's RAM is a whole number of top-order blocks, at most
MAX_GUEST_RAM. The guest's allocator (guest/mm/constants.py) and the host's
device (host/device.py) both take these from here.
"""

from __future__ import annotations

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT  # 4 KiB, x86-64
# The kernel's MAX_ORDER (MAX_PAGE_ORDER since 6.8): the largest block is 2**10 pages.
MAX_ORDER = 10
# Pages in a block of each order (0..MAX_ORDER): a chain's ranges are counted by it.
BLOCK_PAGES = tuple(1 << o for o in range(MAX_ORDER + 1))
# pageblock_order on x86-64 with THP (2 MiB): the default reporting/hinting order.
PAGEBLOCK_ORDER = 9
MIN_GUEST_RAM = 64 << 20
MAX_GUEST_RAM = 64 << 30

# The largest message a guest may send on its Reporting stream: the host's gRPC
# max_receive_message_length and its queue socket's frame limit.
MAX_GUEST_MESSAGE_BYTES = 64 * 1024
# A touch run on the wire at most: its pfn as fixed64 (8 bytes) and its count, at
# most MAX_GUEST_RAM's 2**24 pages, a varint of at most 4 bytes.
TOUCH_RUN_BYTES = 12
# A chain's range on the wire at most: a fixed64 pfn and an order of one varint byte.
CHAIN_RANGE_BYTES = 9
# Room for the rest of a message (ids, tags, the packed arrays' lengths).
MESSAGE_FRAME_BYTES = 1024
# The most runs a touch batch may hold and still fit in one message.
MAX_TOUCH_RUNS = (MAX_GUEST_MESSAGE_BYTES - MESSAGE_FRAME_BYTES) // TOUCH_RUN_BYTES


def guest_id_problem(guest_id: str) -> str | None:
    """Why a guest id is not one the contract allows (None: it is)."""
    if 0 < len(guest_id) <= 128 and guest_id.isprintable():
        return None
    return "must be 1..128 printable characters"


def ram_size_problem(ram_bytes: int) -> str | None:
    """Why a guest RAM size is not one the contract allows (None: it is): whole
    top-order blocks, MIN_GUEST_RAM to MAX_GUEST_RAM."""
    if not MIN_GUEST_RAM <= ram_bytes <= MAX_GUEST_RAM:
        return f"RAM size {ram_bytes} bytes is out of range: must be between 64 MiB and 64 GiB"
    if ram_bytes % (PAGE_SIZE << MAX_ORDER):
        return f"RAM size {ram_bytes} bytes is not a multiple of 4 MiB"
    return None


# How a host ends the session of the guest its OOM killer chose (issue 23): the
# guest's Reporting stream ends with status ABORTED and a detail that starts with
# this; the guest then exits with status 3 (guest/balloon/connection.py).
OOM_KILLED = "killed by the host's OOM killer"
