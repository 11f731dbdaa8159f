"""The guest's RAM as real memory: a shared file the host created, mapped here.

On allocation the guest writes a stamp into each page (guest tag, frame
number, generation); before freeing it checks the stamp. A wrong stamp means
the page's contents were lost while the guest owned it — the host discarded a
page the guest was using. That is data loss: counted, logged with the frame,
never silent.

With PAGE_POISON offered, freed pages are filled with the poison byte and
checked when allocated again: a page whose poison changed while free was
modified behind the guest's back (for example zero-filled by a discard).
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from collections.abc import Callable

from guest.mm.buddy import BuddyAllocator
from guest.mm.constants import PAGE_SIZE

STAMP = struct.Struct("<QIIQ")  # pfn, generation, guest tag, magic
MAGIC = 0x5041474548494E54  # "PAGEHINT"
LOG_FIRST = 20  # log the first losses one by one, then only count


class SharedRam:
    def __init__(
        self,
        path: str,
        mm: BuddyAllocator,
        guest_id: str,
        poison: int | None,
        log: Callable[[str], None],
    ) -> None:
        self.mm = mm
        self.size = mm.ram_bytes
        self.tag = zlib.crc32(guest_id.encode())
        self.poison = poison
        self.log = log
        self.generation = 0
        self.gen_of: dict[int, int] = {}  # allocated block head -> generation
        self.poisoned = bytearray(mm.nr_pages)  # 1: page was filled with poison when freed
        self.data_loss_pages = 0
        self.poison_errors = 0
        self.pages_checked = 0
        self.path = path
        self.fd = -1
        self.map = self._open(path)
        self._poison_page = bytes([poison or 0]) * PAGE_SIZE

    def _open(self, path: str) -> mmap.mmap:
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as e:
            raise ConnectionError(f"cannot open the host's RAM file {path}: {e.strerror}") from None
        try:
            if os.fstat(fd).st_size < self.size:
                raise ConnectionError(f"RAM file {path} is smaller than guest RAM")
            mapping = mmap.mmap(fd, self.size, mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            raise
        # Kept open: fstat of it is the kernel's own count of what the host holds.
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = fd
        return mapping

    def resident_bytes(self) -> int:
        """What the host holds for this guest now, as the kernel counts it (the RAM
        file's allocated blocks): exact at any moment, without asking the host."""
        return os.fstat(self.fd).st_blocks * 512

    # ---- GuestMemory listeners ----------------------------------------------------------

    def on_alloc(self, pfn: int, order: int) -> None:
        m = self.map
        self.generation = gen = (self.generation + 1) & 0xFFFFFFFF
        self.gen_of[pfn] = gen
        pack = STAMP.pack_into
        tag = self.tag
        poisoned = self.poisoned
        for p in range(pfn, pfn + (1 << order)):
            off = p * PAGE_SIZE
            if poisoned[p]:
                poisoned[p] = 0
                if m[off : off + PAGE_SIZE] != self._poison_page:
                    self.poison_errors += 1
                    if self.poison_errors <= LOG_FIRST:
                        self.log(
                            f"poison broken on free frame {p:#x}: its contents changed while free"
                        )
            pack(m, off, p, gen, tag, MAGIC)

    def on_free(self, pfn: int, order: int) -> None:
        self.check(pfn, order)
        self.gen_of.pop(pfn, None)
        if self.poison is not None:
            n = 1 << order
            start = pfn * PAGE_SIZE
            self.map[start : start + n * PAGE_SIZE] = self._poison_page * n
            self.poisoned[pfn : pfn + n] = b"\x01" * n

    def check(self, pfn: int, order: int) -> None:
        """Check the stamps of an allocated block; count and log lost pages."""
        m = self.map
        gen = self.gen_of.get(pfn)
        unpack = STAMP.unpack_from
        for p in range(pfn, pfn + (1 << order)):
            off = p * PAGE_SIZE
            self.pages_checked += 1
            if unpack(m, off) != (p, gen, self.tag, MAGIC):
                self.data_loss_pages += 1
                if self.data_loss_pages <= LOG_FIRST:
                    self.log(f"DATA LOSS: frame {p:#x} lost its contents while allocated")

    def check_all(self, mm: BuddyAllocator) -> None:
        """Check every block still allocated (at the end of a run: a loss is a loss)."""
        for b in mm.blocks():
            if b.state == "allocated":
                self.check(b.pfn, b.order)

    # ---- a new session: a new file ----------------------------------------------------

    def move_to(self, path: str) -> None:
        """The host gave us a new RAM file: copy what we own into it, then switch."""
        if path == self.path:
            return
        new = self._open(path)
        old = self.map
        for b in self.mm.blocks():
            if b.state == "allocated":
                lo, hi = b.pfn * PAGE_SIZE, (b.pfn + (1 << b.order)) * PAGE_SIZE
                new[lo:hi] = old[lo:hi]
        if self.poison is not None:
            p = self.poisoned.find(1)
            while p >= 0:
                off = p * PAGE_SIZE
                new[off : off + PAGE_SIZE] = old[off : off + PAGE_SIZE]
                p = self.poisoned.find(1, p + 1)
        old.close()
        self.map = new
        self.path = path

    def close(self) -> None:
        self.map.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
