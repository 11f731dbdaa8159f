"""The linux boot layout against the reference guest's own page map
(bench/reference/linux/boot-map.json: its /proc/kpageflags at registration and
the pages QEMU held then), and the kernel's load address (KASLR)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from guest.mm import BuddyAllocator
from guest.mm.buddy import boot_written_free
from guest.mm.check import check_invariants
from guest.mm.layout import (
    INIT_SIZE_PAGES,
    KERNEL_FREED_END,
    KERNEL_RESERVED,
    KERNEL_START_PFN,
    aligned_blocks,
    boot_layout,
    merged,
)
from guest.mm.model import AllocatorModel
from pagehint.config import ConfigError, MemoryConfig

BOOT_MAP = Path(__file__).parents[4] / "bench" / "reference" / "linux" / "boot-map.json"
PAGES = (2 << 30) >> 12  # the reference guest's 2 GiB
GRANULE = 512  # QEMU's RAM is THP-backed on the host: it holds 2 MiB at a time


def boot_map() -> tuple[dict[str, Any], int]:
    rec = json.loads(BOOT_MAP.read_text())
    code = next(x for x in rec["proc"]["iomem"].splitlines() if x.strip().endswith("Kernel code"))
    return rec["boot_map"], int(code.strip().split("-")[0], 16) >> 12


def pages_of(runs: Any, kind: str | None = None) -> bytearray:
    out = bytearray(PAGES)
    for run in runs:
        k, a, b = run if kind is not None else (None, *run)
        if k == kind:
            out[a:b] = b"\x01" * (b - a)
    return out


def test_the_kernel_images_runs_are_its_kpageflags_from_where_kaslr_put_it() -> None:
    bm, kernel = boot_map()
    layout = boot_layout("linux", PAGES, kernel)
    near = [(k, a - kernel, b - kernel) for k, a, b in bm["kpageflags"] if kernel <= a]
    reserved = [(a, b) for k, a, b in near if k == "R" and a < INIT_SIZE_PAGES]
    assert reserved == list(KERNEL_RESERVED)
    # the gaps between them: neither buddy nor reserved at registration (on the
    # per-CPU lists, where free_reserved_area put them)
    gaps = [(a, b) for k, a, b in near if k == "O" and a < KERNEL_FREED_END]
    assert gaps == [(a - kernel, b - kernel) for a, b in layout.freed_late]


def test_the_free_pages_the_boot_wrote_are_the_ones_the_host_held() -> None:
    bm, kernel = boot_map()
    layout = boot_layout("linux", PAGES, kernel)
    free = pages_of(bm["kpageflags"], "B")
    held = pages_of(bm["resident"])
    written = pages_of(layout.written)
    assert all(held[p] for p in range(PAGES) if written[p] and free[p])
    # and the host held no free page outside them, but for boot's own small holes
    # (buffers that came and went among its allocations: 413 pages here) and the
    # rest of each 2 MiB the host holds whole
    near = [
        p
        for p in range(PAGES)
        if held[p] and free[p] and not any(written[p & -GRANULE : (p & -GRANULE) + GRANULE])
    ]
    assert len(near) < GRANULE


def test_a_kaslr_guest_has_the_reference_zoneinfo_and_its_written_memory_free() -> None:
    _, kernel = boot_map()
    mm = BuddyAllocator(2 << 30, model=AllocatorModel(layout="linux", kernel_at=kernel << 12))
    assert [z.managed_pages for z in mm.zones] == [3_840, 499_193]
    blocks = list(boot_written_free(mm))
    free = pages_of((b.pfn, b.pfn + (1 << b.order)) for b in mm.blocks() if b.state != "allocated")
    assert all(free[p] and free[p + (1 << o) - 1] for p, o in blocks)
    # QEMU's copy at 1 MiB and the decompressor's below 16 MiB + init_size (2,009
    # pages each), and in the kernel's decompressed length its gaps, on the
    # per-CPU lists (2,011), and what follows the image's brk (2,267; the odd
    # pages just after the brk, 495, went to boot's small allocations first, as
    # the reference guest's kpageflags has them)
    assert sum(1 << o for _, o in blocks) == 2_009 + 2_009 + 2_011 + 2_267
    inside = [p for p, _ in blocks if kernel <= p < kernel + INIT_SIZE_PAGES]
    assert min(inside) == kernel + KERNEL_RESERVED[0][1]
    assert max(inside) < kernel + INIT_SIZE_PAGES
    check_invariants(mm)


def test_the_default_kernel_is_at_16_mib_and_its_buffer_holds_the_decompressors_copy() -> None:
    layout = boot_layout("linux", PAGES)
    assert layout.reserved[1][0] == KERNEL_START_PFN
    assert layout.written[-1] == (KERNEL_START_PFN, KERNEL_START_PFN + INIT_SIZE_PAGES)


@pytest.mark.parametrize(
    ("kernel_at", "says"),
    [
        (KERNEL_START_PFN + 1, "multiple of 2 MiB"),
        (KERNEL_START_PFN - 512, "multiple of 2 MiB"),
        (KERNEL_START_PFN + 8_192, "decompressor's own copy"),
        (PAGES - 4096, "must end below"),
    ],
)
def test_a_kernel_where_none_loads_is_refused(kernel_at: int, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        boot_layout("linux", PAGES, kernel_at)


def test_the_flag_is_a_2_mib_multiple_from_16_mib() -> None:
    for bad in (15 << 20, (16 << 20) + 4096, -1):
        with pytest.raises(ConfigError, match="--kernel-at"):
            MemoryConfig(kernel_at=bad)
    assert MemoryConfig(kernel_at=1388 << 20).kernel_at == 1388 << 20


def test_merged_and_aligned_blocks() -> None:
    assert merged([(5, 9), (0, 2), (8, 12), (12, 13)]) == ((0, 2), (5, 13))
    assert list(aligned_blocks(3, 16)) == [(3, 0), (4, 2), (8, 3)]


def test_a_kernel_address_without_the_linux_layout_is_refused_not_ignored() -> None:
    away = KERNEL_START_PFN + 512 * 100
    for name, pages in (("none", PAGES), ("auto", PAGES // 4)):
        with pytest.raises(ValueError, match="only the linux layout places a kernel"):
            boot_layout(name, pages, away)
    assert boot_layout("none", PAGES).reserved == ()  # the default address: nothing to say


def test_too_small_for_the_layout_says_how_much_it_needs() -> None:
    with pytest.raises(ValueError, match="needs 87 MiB or more"):
        boot_layout("linux", 86 << 8)
    assert boot_layout("linux", 87 << 8).reserved
