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
(bench/reference/linux/: Debian 12's 6.1 kernel, 2 GiB, 2 vCPUs under QEMU 7.2,
booted with ``-kernel``), from its /proc/iomem, /proc/zoneinfo and /proc/meminfo,
and from its /proc/kpageflags read against QEMU's page map at registration
(``boot-map.json``, ``record.py --boot-map``); sizes that grow with RAM are
scaled (the memory map is 64 bytes a page). The 2 GiB guest's managed pages and
watermarks come out as its zoneinfo reads: DMA 3,840, DMA32 499,193; min 11,177.

The kernel image sits where the decompressor put it: at ``kernel_at``
(CONFIG_PHYSICAL_START, 16 MiB, by default, as booted with ``nokaslr``; Debian's
kernel has KASLR, which picks a random 2 MiB-aligned address: a recording's
/proc/iomem "Kernel code" says which). Its sections stay reserved; the gaps
between them and its init memory are freed after every initcall, so after
khugepaged set the watermarks (hugepage_init), page by page onto the per-CPU
lists (free_initmem, mark_rodata_ro -> free_reserved_area -> free_reserved_page;
adjust_managed_page_count recomputes no watermark). At registration the
reference guest's kpageflags has them neither in the buddy nor reserved (on a
list, or allocated by then: kpageflags does not tell the two apart).

Boot also writes memory it then frees, which the host therefore holds though the
guest's buddy has it free and unreported: QEMU's copy of the protected-mode
kernel at 1 MiB (x86_load_linux: the bzImage less its setup sectors), the
decompressor's copy of itself ending at LOAD_PHYSICAL_ADDR + init_size
(arch/x86/boot/compressed/head_64.S; KASLR picks the kernel's address only
later, in extract_kernel, and avoids that copy), and the kernel's decompressed
image, ELF headers and relocations from its load address (misc.c writes
``output_len`` bytes there, then moves the segments into place: for this build
about 10 MiB past the image's end). Free page reporting returns it when a
pass's walk reaches it; the reference guest's small late passes are that.

``none`` is the earlier model: all of RAM free from pfn 0, nothing allocated,
nothing written.
``auto`` (the default) is ``linux`` from 1 GiB of RAM and ``none`` below. A
departure, named in the README: under 1 GiB a Linux guest keeps so little free
beside its kernel (82 MiB reserved, 28 MiB allocated by boot, a THP-raised
min_free_kbytes) that free page reporting's zone gate (low + 64 MiB) seldom
opens; the small guests of examples, demos and tests keep the plain layout
unless given ``--boot-layout linux`` (which fits from 87 MiB).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

from guest.mm.constants import (
    MAX_ORDER,
    MIGRATE_MOVABLE,
    MIGRATE_RECLAIMABLE,
    MIGRATE_UNMOVABLE,
    PAGE_SHIFT,
)

LAYOUTS = ("auto", "linux", "none")

# The first 1 MiB: pfn 0 (no RAM), 0x1-0x9e (reserved), 0x9f-0xff (e820 hole).
LOW_RESERVED_PAGES = 0x100
# CONFIG_PHYSICAL_START (Debian's config: 0x1000000): the kernel without KASLR,
# and LOAD_PHYSICAL_ADDR, the base the decompressor relocates itself from.
KERNEL_START_PFN = 0x1000000 >> PAGE_SHIFT
# CONFIG_PHYSICAL_ALIGN (0x200000): KASLR's slots, and a --kernel-at's alignment.
KERNEL_ALIGN_PAGES = 0x200000 >> PAGE_SHIFT
# The kernel image's reserved runs from its load address (PageReserved in the
# reference guest's /proc/kpageflags at registration, boot-map.json): text,
# rodata, data and what stays reserved after it, bss, the brk in use. Its
# "Kernel code/rodata/data/bss" in /proc/iomem begin at the same offsets.
KERNEL_RESERVED = ((0, 3586), (4096, 6379), (6656, 8260), (8975, 12803), (13312, 13329))
# The gaps between the first four runs: reserved at memblock_free_all (memblock
# reserves _text to __bss_stop), freed at the end of boot (free_kernel_image_pages,
# free_initmem). What follows the brk in use was never reserved: buddy memory.
KERNEL_FREED_END = 13312
# The bzImage (/boot/vmlinuz-6.1.0-57-amd64): its setup header's init_size (offset
# 0x260: 0x3f98000), the decompression buffer from the load address; the
# protected-mode kernel, the file less its (setup_sects + 1) x 512 bytes of setup
# (8,226,752 bytes), which QEMU loads at 1 MiB and the decompressor copies to the
# end of the buffer at LOAD_PHYSICAL_ADDR (its bss, heap and page tables beyond
# the copied part are not in the header: the copy is put flush against the end);
# and output_len, the decompressed length its XZ payload's size trailer gives
# (65,906,612 bytes: the image, its ELF headers and relocations).
INIT_SIZE_PAGES = 0x3F98000 >> PAGE_SHIFT
ZO_PAGES = -(-8_226_752 >> PAGE_SHIFT)
OUTPUT_LEN_PAGES = -(-65_906_612 >> PAGE_SHIFT)
QEMU_KERNEL_LOAD_PFN = 0x100000 >> PAGE_SHIFT
# struct page is 64 bytes (sparse vmemmap, 2 MiB mappings): RAM / 64.
MEMMAP_BYTES_PER_PAGE = 64
# The rest of memblock's reservations on the reference guest (per-CPU areas,
# page tables of the direct map, ACPI copies, log buffer...): kpageflags' other
# reserved runs below the memory map (830 + 62 + 565 pages), which is also present
# 520,160 - managed 499,193 - kernel 11,318 - memory map 8,192 in its DMA32 zone.
OTHER_MEMBLOCK_PAGES = 1457
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
    """Pages the buddy never gets (``reserved``: half-open pfn ranges), pages
    memblock_free_all keeps back that the end of boot frees onto the per-CPU lists
    (``freed_late``), pages early boot allocates and holds (``allocated``:
    (migratetype, pages)), and the ranges the boot wrote (``written``): those of
    their pages that are free are held by the host all the same."""

    reserved: tuple[tuple[int, int], ...]
    allocated: tuple[tuple[int, int], ...]
    freed_late: tuple[tuple[int, int], ...] = ()
    written: tuple[tuple[int, int], ...] = ()

    @property
    def reserved_pages(self) -> int:
        return sum(end - start for start, end in self.reserved)


def resolved(name: str, nr_pages: int) -> str:
    """The layout ``name`` stands for in a guest of ``nr_pages``: ``auto`` is
    linux from 1 GiB."""
    if name == "auto":
        return "linux" if nr_pages >= AUTO_LINUX_MIN_PAGES else "none"
    return name


def boot_layout(name: str, nr_pages: int, kernel_at: int = KERNEL_START_PFN) -> BootLayout:
    """The layout ``name`` of ``nr_pages`` of RAM, the kernel loaded at pfn
    ``kernel_at``; ValueError when it does not fit."""
    name = resolved(name, nr_pages)
    if name == "none":
        if kernel_at != KERNEL_START_PFN:
            raise ValueError(
                f"--kernel-at {kernel_at << PAGE_SHIFT >> 20}MiB: only the linux layout "
                f"places a kernel, and this {nr_pages << PAGE_SHIFT >> 20} MiB guest's layout "
                "is none (auto is linux from 1 GiB): give --boot-layout linux"
            )
        return BootLayout((), ())
    if name != "linux":
        raise ValueError(f"boot layout {name!r}: expected one of {', '.join(LAYOUTS)}")
    memmap = -(-nr_pages * MEMMAP_BYTES_PER_PAGE >> PAGE_SHIFT)
    top = nr_pages - FIRMWARE_TOP_PAGES
    # memblock allocates top-down: the memory map highest, then the rest below it.
    low_end = top - memmap - OTHER_MEMBLOCK_PAGES
    _check_kernel_at(kernel_at, low_end, nr_pages)
    reserved = (
        (0, LOW_RESERVED_PAGES),
        *((kernel_at + s, kernel_at + e) for s, e in KERNEL_RESERVED),
        (low_end, nr_pages),
    )
    freed_late = tuple(
        (kernel_at + e, kernel_at + s)
        for (_, e), (s, _) in pairwise(KERNEL_RESERVED)
        if s <= KERNEL_FREED_END
    )
    zo_end = KERNEL_START_PFN + INIT_SIZE_PAGES
    written = merged(
        [
            (QEMU_KERNEL_LOAD_PFN, QEMU_KERNEL_LOAD_PFN + ZO_PAGES),
            (zo_end - ZO_PAGES, zo_end),
            (kernel_at, kernel_at + OUTPUT_LEN_PAGES),
        ]
    )
    return BootLayout(reserved, BOOT_ALLOCATED, freed_late, written)


def merged(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Half-open ranges, sorted, overlapping ones joined."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return tuple(out)


def aligned_blocks(start: int, end: int) -> Iterator[tuple[int, int]]:
    """[start, end) as the largest naturally aligned blocks, in pfn order:
    (pfn, order), order at most MAX_ORDER (__free_pages_memory's split)."""
    pfn = start
    while pfn < end:
        order = min(MAX_ORDER, (pfn & -pfn).bit_length() - 1 if pfn else MAX_ORDER)
        while pfn + (1 << order) > end:
            order -= 1
        yield pfn, order
        pfn += 1 << order


def linux_min_pages() -> int:
    """The least RAM (pages, whole MiB) the linux layout fits with the kernel at
    16 MiB: its decompression buffer below memblock's top reservations."""
    need = KERNEL_START_PFN + INIT_SIZE_PAGES + FIRMWARE_TOP_PAGES + OTHER_MEMBLOCK_PAGES
    n = need
    while n - (-(-n * MEMMAP_BYTES_PER_PAGE >> PAGE_SHIFT)) < need:
        n += 256
    return n


def _check_kernel_at(kernel_at: int, low_end: int, nr_pages: int) -> None:
    """Where the decompressor may have put the kernel: 2 MiB aligned, from
    LOAD_PHYSICAL_ADDR up, its whole buffer below memblock's top reservations, and
    clear of the decompressor's own copy (kaslr.c's MEM_AVOID_ZO_RANGE) unless at
    LOAD_PHYSICAL_ADDR itself, whose buffer holds that copy."""
    mib = nr_pages << PAGE_SHIFT >> 20
    end = kernel_at + INIT_SIZE_PAGES
    if end > low_end:
        if kernel_at == KERNEL_START_PFN:
            raise ValueError(
                f"{mib} MiB is too small for the linux layout (the kernel's decompression "
                f"buffer ends at {end << PAGE_SHIFT >> 20} MiB; it needs "
                f"{linux_min_pages() << PAGE_SHIFT >> 20} MiB or more): give --boot-layout none"
            )
        raise ValueError(
            f"--kernel-at {kernel_at << PAGE_SHIFT >> 20}MiB: the kernel's "
            f"{INIT_SIZE_PAGES << PAGE_SHIFT >> 20} MiB decompression buffer must end below "
            f"{low_end << PAGE_SHIFT >> 20} MiB in a {mib} MiB guest"
        )
    if kernel_at % KERNEL_ALIGN_PAGES or kernel_at < KERNEL_START_PFN:
        raise ValueError(
            f"--kernel-at {kernel_at << PAGE_SHIFT >> 10}KiB: a kernel loads at a multiple "
            f"of 2 MiB from 16 MiB up"
        )
    zo_start = KERNEL_START_PFN + INIT_SIZE_PAGES - ZO_PAGES
    if kernel_at != KERNEL_START_PFN and kernel_at < zo_start + ZO_PAGES and end > zo_start:
        raise ValueError(
            f"--kernel-at {kernel_at << PAGE_SHIFT >> 20}MiB: overlaps the decompressor's own "
            f"copy at {zo_start << PAGE_SHIFT >> 20}-{(zo_start + ZO_PAGES) << PAGE_SHIFT >> 20} "
            "MiB, which KASLR avoids"
        )


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
