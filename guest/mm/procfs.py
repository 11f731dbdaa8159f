"""What the allocator looks like from /proc: per-zone free counts by order
(/proc/buddyinfo) and the pages reported. Read from outside the allocator; its
own paths never need them."""

from __future__ import annotations

from guest.mm.buddy import BuddyAllocator
from guest.mm.constants import MIGRATETYPE_NAMES, NR_ORDERS, PAGEBLOCK_ORDER, REPORTED


def reported_pages(mm: BuddyAllocator) -> int:
    """Free pages the hinting has reported (PageReported), over every zone."""
    pg = mm.pg
    total = 0
    for zone in mm.zones:
        for o in range(NR_ORDERS):
            for pfn in zone.free_area[o]:
                if pg[pfn] & REPORTED:
                    total += 1 << o
    return total


def buddyinfo(mm: BuddyAllocator) -> dict[str, list[int]]:
    """Per zone, nr_free for each order, like /proc/buddyinfo."""
    return {z.name: [a.nr_free for a in z.free_area] for z in mm.zones}


def buddyinfo_text(mm: BuddyAllocator) -> str:
    """/proc/buddyinfo's lines."""
    lines = []
    for name, counts in buddyinfo(mm).items():
        lines.append(f"Node 0, zone {name:>8} " + " ".join(f"{c:6d}" for c in counts))
    return "\n".join(lines)


def pagetypeinfo(mm: BuddyAllocator) -> dict[str, dict[str, list[int]]]:
    """Per zone and migratetype, nr_free for each order, like /proc/pagetypeinfo."""
    return {
        z.name: {
            name: [a.free_list[mt].nr_free for a in z.free_area]
            for mt, name in enumerate(MIGRATETYPE_NAMES)
        }
        for z in mm.zones
    }


def pageblock_counts(mm: BuddyAllocator) -> dict[str, dict[str, int]]:
    """Per zone, how many pageblocks each migratetype has (pagetypeinfo's second table)."""
    out = {}
    for z in mm.zones:
        blocks = mm.pageblock_mt[z.start_pfn >> PAGEBLOCK_ORDER : z.end_pfn >> PAGEBLOCK_ORDER]
        out[z.name] = {name: blocks.count(mt) for mt, name in enumerate(MIGRATETYPE_NAMES)}
    return out
