from __future__ import annotations

import os
from pathlib import Path

from guest.mm import BuddyAllocator
from guest.mm.constants import PAGE_SIZE
from guest.ram import SharedRam
from pagehint.config import BARE_MEMORY
from tests.logs import log_lines


def make(tmp_path: Path, poison: int | None = None) -> tuple[BuddyAllocator, SharedRam, list[str]]:
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    path = tmp_path / "g-00000001.ram"  # as a host names it (host/memory/shm.py)
    with path.open("wb") as f:
        f.truncate(mm.ram_bytes)
    path.chmod(0o600)  # a host's files are its user's alone
    logs = log_lines()
    return mm, SharedRam(str(path), mm, "g", poison, folder=str(tmp_path)), logs


def test_stamps_detect_a_page_lost_while_allocated(tmp_path: Path) -> None:
    mm, ram, logs = make(tmp_path)
    a = mm.alloc(2)
    ram.on_alloc(a, 2)
    ram.on_free(a, 2)
    assert ram.data_loss_pages == 0
    b = mm.alloc(2)
    ram.on_alloc(b, 2)
    # the host zero-fills one page (as a discard would) while the guest owns it
    off = (b + 1) * PAGE_SIZE
    ram.map[off : off + PAGE_SIZE] = bytes(PAGE_SIZE)
    ram.on_free(b, 2)
    assert ram.data_loss_pages == 1
    assert any(f"frame {b + 1:#x}" in m for m in logs)


def test_poison_checked_on_reallocation(tmp_path: Path) -> None:
    mm, ram, _ = make(tmp_path, poison=0xAA)
    a = mm.alloc(0)
    ram.on_alloc(a, 0)
    ram.on_free(a, 0)
    assert ram.map[a * PAGE_SIZE] == 0xAA
    ram.on_alloc(a, 0)  # poison intact
    assert ram.poison_errors == 0
    ram.on_free(a, 0)
    ram.map[a * PAGE_SIZE : (a + 1) * PAGE_SIZE] = bytes(PAGE_SIZE)  # a discard zeroed it
    ram.on_alloc(a, 0)
    assert ram.poison_errors == 1


def test_move_to_copies_what_the_guest_owns(tmp_path: Path) -> None:
    mm, ram, _ = make(tmp_path)
    a = mm.alloc(3)
    ram.on_alloc(a, 3)
    new = tmp_path / "g-00000002.ram"
    with new.open("wb") as f:
        f.truncate(mm.ram_bytes)
    new.chmod(0o600)
    ram.move_to(str(new))
    ram.on_free(a, 3)
    assert ram.data_loss_pages == 0
    assert os.path.getsize(new) == mm.ram_bytes


def test_a_free_block_the_boot_wrote_is_held_but_checked_by_no_one(tmp_path: Path) -> None:
    mm, ram, _ = make(tmp_path)
    a = mm.alloc(2)
    mm.free(a, 2)
    before = ram.resident_bytes()
    ram.write_free(a, 2)
    assert ram.resident_bytes() >= before + 4 * PAGE_SIZE  # the file holds the frames
    assert a not in ram.gen_of  # no allocation's stamp to hold a later owner to
    b = mm.alloc(2)
    ram.on_alloc(b, 2)
    ram.on_free(b, 2)
    assert ram.data_loss_pages == 0
