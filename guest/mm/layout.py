"""Where a booted Linux guest's RAM is before any workload: the boot layout.

A real guest's buddy allocator never sees all of its RAM. x86-64 Linux keeps
the first 1 MiB out (pfn 0 is not RAM, the BIOS area is reserved: since 5.13
arch/x86/kernel/setup.c reserves all of it), the kernel image is loaded at
CONFIG_PHYSICAL_START (16 MiB), memblock places the memory map and its other
early allocations top-down from the end of RAM, and the firmware keeps a little
at the top of low memory. What is left is freed into the buddy lists
(memblock_free_all: the largest aligned blocks, added at the tail), and early
boot then allocates some of it for good (slab, stacks, page tables, the first
processes), stealing pageblocks for the unmovable and reclaimable kinds.

The ``linux`` layout is that, with every size measured on the reference guest
(bench/reference/linux/: Debian 12's 6.1 kernel, 2 GiB, 2 vCPUs under QEMU 7.2),
from its /proc/iomem, /proc/zoneinfo and /proc/meminfo; sizes that grow with
RAM are scaled (the memory map is 64 bytes a page). The 2 GiB guest's managed
pages come out as its zoneinfo reads: DMA 3,840, DMA32 499,193.
``none`` is the earlier model: all of RAM free from pfn 0, nothing allocated.
``auto`` (the default) is ``linux`` from 1 GiB of RAM and ``none`` below. A
departure, named in the README: under 1 GiB a Linux guest keeps so little free
beside its kernel (82 MiB reserved, 28 MiB allocated by boot, a THP-raised
min_free_kbytes) that free page reporting's zone gate (low + 64 MiB) seldom
opens; the small guests of examples, demos and tests keep the plain layout
unless given ``--boot-layout linux`` (which fits from 76 MiB).
"""

from __future__ import annotations

from dataclasses import dataclass

from guest.mm.constants import (
    MIGRATE_MOVABLE,
    MIGRATE_RECLAIMABLE,
    MIGRATE_UNMOVABLE,
    PAGE_SHIFT,
)

LAYOUTS = ("auto", "linux", "none")

# The first 1 MiB: pfn 0 (no RAM), 0x1-0x9e (reserved), 0x9f-0xff (e820 hole).
LOW_RESERVED_PAGES = 0x100
# CONFIG_PHYSICAL_START (Debian's config: 0x1000000): the kernel without KASLR.
KERNEL_START_PFN = 0x1000000 >> PAGE_SHIFT
# The reference guest's "Kernel code/rodata/data/bss" (/proc/iomem) in pages,
# after free_kernel_image_pages() frees the gaps between them and __init.
KERNEL_IMAGE_PAGES = 3586 + 2283 + 585 + 4336
# struct page is 64 bytes (sparse vmemmap, 2 MiB mappings): RAM / 64.
MEMMAP_BYTES_PER_PAGE = 64
# The rest of memblock's reservations on the reference guest (per-CPU areas,
# page tables of the direct map, ACPI copies, log buffer...): present 520,160 -
# managed 499,193 - kernel 10,790 - memory map 8,192 in its DMA32 zone.
OTHER_MEMBLOCK_PAGES = 1985
# QEMU+SeaBIOS's e820 keeps the last 128 KiB below the RAM's top (7ffe0000-7fffffff
# on the reference guest): not RAM to the kernel.
FIRMWARE_TOP_PAGES = 32
# Early boot's allocations still held when its workload starts (the reference
# guest's /proc/meminfo after boot, in pages): SReclaimable 8,848 kB; AnonPages
# + Shmem 3,080 kB (movable); the rest of MemTotal - MemFree less the 3,035 pages
# its per-CPU lists held (SUnreclaim, stacks, page tables, per-CPU...): unmovable.
# ``auto`` lays a guest out as Linux from this size (see the module's text).
AUTO_LINUX_MIN_PAGES = (1 << 30) >> PAGE_SHIFT
BOOT_ALLOCATED = (
    (MIGRATE_UNMOVABLE, 4146),
    (MIGRATE_RECLAIMABLE, 2212),
    (MIGRATE_MOVABLE, 770),
)


@dataclass(frozen=True)
class BootLayout:
    """Pages the buddy never gets (``reserved``: half-open pfn ranges) and pages
    early boot allocates and holds (``allocated``: (migratetype, pages))."""

    reserved: tuple[tuple[int, int], ...]
    allocated: tuple[tuple[int, int], ...]

    @property
    def reserved_pages(self) -> int:
        return sum(end - start for start, end in self.reserved)


def boot_layout(name: str, nr_pages: int) -> BootLayout:
    if name == "auto":
        name = "linux" if nr_pages >= AUTO_LINUX_MIN_PAGES else "none"
    if name == "none":
        return BootLayout((), ())
    if name != "linux":
        raise ValueError(f"boot layout {name!r}: expected one of {', '.join(LAYOUTS)}")
    memmap = -(-nr_pages * MEMMAP_BYTES_PER_PAGE >> PAGE_SHIFT)
    top = nr_pages - FIRMWARE_TOP_PAGES
    # memblock allocates top-down: the memory map highest, then the rest below it.
    low_end = top - memmap - OTHER_MEMBLOCK_PAGES
    kernel_end = KERNEL_START_PFN + KERNEL_IMAGE_PAGES
    if kernel_end >= low_end:
        raise ValueError(
            f"{nr_pages << PAGE_SHIFT >> 20} MiB is too small for the linux layout (the "
            f"kernel image ends at {kernel_end << PAGE_SHIFT >> 20} MiB): give --boot-layout none"
        )
    reserved = (
        (0, LOW_RESERVED_PAGES),
        (KERNEL_START_PFN, kernel_end),
        (low_end, nr_pages),
    )
    return BootLayout(reserved, BOOT_ALLOCATED)


def free_ranges(nr_pages: int, reserved: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    """The half-open pfn ranges between the reservations."""
    out = []
    pfn = 0
    for start, end in sorted(reserved):
        if start > pfn:
            out.append((pfn, start))
        pfn = max(pfn, end)
    if pfn < nr_pages:
        out.append((pfn, nr_pages))
    return out
