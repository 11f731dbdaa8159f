"""The guest's RAM as real memory: a shared file the host created, mapped here.

On allocation the guest writes a stamp into each page (guest tag, frame
number, generation); before freeing it checks the stamp. A wrong stamp means
the page's contents were lost while the guest owned it — the host discarded a
page the guest was using. That is data loss: counted, logged with the frame,
never silent.

With PAGE_POISON offered, freed pages are filled with the poison byte and
checked when allocated again: a page whose poison changed while free was
modified behind the guest's back (for example zero-filled by a discard).

With a host that has its own memory model (host_memory), a frame the host
swapped out is a hole in the file until the host copies it back, which it does
before it settles the touch batch that told it of the guest's touch. The guest's
stamps are its reads and writes of its pages, so they wait for that (``gate``:
guest/balloon/driver.py): an access to a block with a frame the host does not
hold, or any access while a touch is unsettled, is deferred, in order, until
the settling Notice; a chain waits for those too (the driver), so a block
whose check at its free still waits is never discarded before it. An eviction
Notice (``evict_id``) may name a block whose access still waits: ``regate``
touches every waiting block again, so none runs before the host brought its
frames back, and the driver then acknowledges the Notice, after which the host
moves the evicted frames out of this file.

The file is the host's word, and the guest writes into it: ``open_ram_file``
believes it only when it is a fresh file a host made for this session in the
guest's own RAM folder (docs/architecture.md, "Who trusts what").
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import re
import stat
import struct
import zlib
from collections import deque
from collections.abc import Callable
from typing import NamedTuple, Protocol

from guest.mm.buddy import BuddyAllocator
from guest.mm.constants import PAGE_SIZE
from pagehint.errors import UsageError

log = logging.getLogger(__name__)

STAMP = struct.Struct("<QIIQ")  # pfn, generation, guest tag, magic
MAGIC = 0x5041474548494E54  # "PAGEHINT"
LOG_FIRST = 20  # log the first losses one by one, then only count

# The names a host gives (host/memory/shm.py: _RAM_NAME for its files, PRIVATE_PREFIX
# and its pid for its own folder). The guest cannot import the host; a test holds
# the two to each other.
RAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}-[0-9a-f]{8}\.ram")
IMAGE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}-[0-9a-f]{8}\.img")  # host/migration.py
HOST_FOLDER = re.compile(r"pagehint-host-[0-9]{1,10}")


class TouchGate(Protocol):
    """What the RAM needs of the driver's touch link (guest/balloon/touch_link.py)."""

    on_settled: list[Callable[[int], None]]
    on_evicted: list[Callable[[], None]]

    def gate(self, pfn: int, order: int) -> int: ...


class Deferred(NamedTuple):
    """An access to a block that waits for the host to settle touch runs up to ticket."""

    ticket: int
    pfn: int
    order: int
    access: Callable[[], None]


class RamFileRefused(UsageError):
    """The host named a RAM file this guest will not open: a broken or hostile host.
    Final: asking again would only get the same answer from the same host."""


SHOWN_MAX = 200  # characters of a host-named path a log line repeats


def shown(named: str) -> str:
    """A path the host named, as a log line may repeat it: control characters
    escaped (a newline in it forged a second log line), at most SHOWN_MAX long."""
    text = named.encode("unicode_escape", "backslashreplace").decode("ascii")
    if len(text) > SHOWN_MAX:
        text = f"{text[:SHOWN_MAX]}… ({len(named)} characters)"
    return text


def open_ram_file(named: str, folder: str, size: int) -> int:
    """Open the RAM file the host named, read-write, and return its descriptor; only
    if it is a fresh file made for this session, in ``folder`` (the guest's --shm-dir)
    or a host's own folder directly in it. Anything else is RamFileRefused, before
    anything is mapped or written.

    Every directory below ``folder`` is opened relative to the one before with
    O_NOFOLLOW, so no symbolic link is followed and a folder swapped for one
    between a check and the open is not either; what was opened is checked with
    fstat, the file itself and not a name for it.
    """
    root, sub, name = _place(named, folder)

    def refuse(rule: str) -> RamFileRefused:
        return RamFileRefused(f"named RAM file {shown(named)}: {rule}; not mapping it")

    dirs: list[int] = []
    try:
        dirs.append(_open_dir(root, None, refuse))
        if sub is not None:
            dirs.append(_open_dir(sub, dirs[0], refuse))
            _check_private(os.fstat(dirs[-1]), f"its folder {sub}", refuse)
        fd = _open_file(name, dirs[-1], refuse)
    finally:
        for d in dirs:
            os.close(d)
    try:
        st = os.fstat(fd)
        _check_fresh(st, size, refuse)
        _check_private(st, "it", refuse)
        _lock(fd, refuse)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_private(st: os.stat_result, what: str, refuse: Callable[[str], RamFileRefused]) -> None:
    """This guest's user's, and no one else's: a host makes its folder 0700 and its
    files 0600, as the user host and guests run as (compose, the kubernetes overlay:
    10001). A file of another user's, which a root guest could open, would hand
    this guest's pages to that user."""
    me = os.geteuid()
    if st.st_uid != me:
        raise refuse(f"{what} belongs to uid {st.st_uid}, not to this guest's user (uid {me})")
    if st.st_mode & 0o077:
        raise refuse(
            f"{what} is open to others (mode {stat.S_IMODE(st.st_mode):o}; a host makes "
            "its folder 0700 and its files 0600)"
        )


def _lock(fd: int, refuse: Callable[[str], RamFileRefused]) -> None:
    """Held for as long as the file is mapped (closing it lets go): a host that names
    one fresh file to two guests, or another guest's, is refused by the second."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise refuse("is in use by another guest (locked)") from None
    except OSError as e:
        raise refuse(f"cannot be locked: {e.strerror}") from None


def open_image_file(named: str, folder: str, size: int) -> int:
    """Open a snapshot image the host named, read-only, under the RAM file's rules
    (its folder, no link followed, a regular private file of this guest's RAM
    size); RamFileRefused otherwise. Nothing is ever written to it."""
    root, sub, name = _place(named, folder, IMAGE_NAME, "snapshot image", "NAME-8HEX.img")

    def refuse(rule: str) -> RamFileRefused:
        return RamFileRefused(f"named snapshot image {shown(named)}: {rule}; not reading it")

    dirs: list[int] = []
    try:
        dirs.append(_open_dir(root, None, refuse))
        if sub is not None:
            dirs.append(_open_dir(sub, dirs[0], refuse))
            _check_private(os.fstat(dirs[-1]), f"its folder {sub}", refuse)
        fd = _open_file(name, dirs[-1], refuse, os.O_RDONLY)
    finally:
        for d in dirs:
            os.close(d)
    try:
        st = os.fstat(fd)
        _check_private(st, "it", refuse)
        if st.st_size != size or st.st_nlink != 1:
            raise refuse(f"is {st.st_size} bytes with {st.st_nlink} links, not this guest's RAM")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _place(
    named: str,
    folder: str,
    pattern: re.Pattern[str] = RAM_NAME,
    what: str = "RAM file",
    form: str = "NAME-8HEX.ram",
) -> tuple[str, str | None, str]:
    """(the guest's folder as named, the host's folder in it or None, the file's name)."""
    where = f"named {what} {shown(named)}"
    if "\0" in named or not os.path.isabs(named) or os.path.normpath(named) != named:
        raise RamFileRefused(f"{where}: not a plain absolute path; not mapping it")
    parent, name = os.path.split(named)
    # The folder as configured and as resolved: /dev/shm may itself be a link
    # (to /run/shm), which the guest's own setting is trusted to be.
    mine = {os.path.abspath(folder), os.path.realpath(folder)}
    up, sub = os.path.split(parent)
    if parent in mine:
        root, host_folder = parent, None
    elif up in mine and HOST_FOLDER.fullmatch(sub):
        root, host_folder = up, sub
    else:
        raise RamFileRefused(
            f"{where}: not in this guest's RAM folder {folder} (--shm-dir) or a host's "
            "pagehint-host-PID folder directly in it; not mapping it"
        )
    if not pattern.fullmatch(name):
        raise RamFileRefused(f"{where}: not a {what}'s name ({form}); not opening it")
    return root, host_folder, name


def _open_dir(name: str, at: int | None, refuse: Callable[[str], RamFileRefused]) -> int:
    """The guest's folder (``at`` None: as configured), or a host's folder in it (never
    through a symbolic link)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    if at is not None:
        try:
            st = os.stat(name, dir_fd=at, follow_symlinks=False)
        except OSError as e:
            raise refuse(f"cannot open its folder {name}: {e.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a folder"
            raise refuse(f"its folder {name} is {what}")
        flags |= os.O_NOFOLLOW  # and if it was swapped for a link since: ELOOP
    try:
        return os.open(name, flags, dir_fd=at)
    except OSError as e:
        raise refuse(f"cannot open its folder {name}: {e.strerror}") from None


def _open_file(
    name: str, at: int, refuse: Callable[[str], RamFileRefused], mode: int = os.O_RDWR
) -> int:
    # Not even opened unless it is a regular file (a FIFO, a device: opening one
    # can block or act); checked again on what was opened.
    try:
        st = os.stat(name, dir_fd=at, follow_symlinks=False)
    except OSError as e:
        raise refuse(f"cannot open: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise refuse("is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise refuse("is not a regular file")
    try:
        return os.open(
            name, mode | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=at
        )
    except OSError as e:
        raise refuse(f"cannot open: {e.strerror}") from None


def _check_fresh(st: os.stat_result, size: int, refuse: Callable[[str], RamFileRefused]) -> None:
    """What the host's own file is: regular, its only name, exactly this guest's RAM
    in size, nothing written yet."""
    if not stat.S_ISREG(st.st_mode):
        raise refuse("is not a regular file")
    if st.st_nlink != 1:
        # A hard link to any file of this user's would pass every check of its name.
        raise refuse(f"has {st.st_nlink} links (a host's RAM file has one)")
    if st.st_size != size:
        raise refuse(f"is {st.st_size} bytes, not this guest's RAM size ({size} bytes)")
    if st.st_blocks:
        # A host makes a new sparse file for each session (O_EXCL): one with any
        # block allocated was not made for this session.
        raise refuse(
            f"already holds data ({st.st_blocks * 512} bytes): not a fresh file made "
            "for this session"
        )


class SharedRam:
    def __init__(
        self,
        path: str,
        mm: BuddyAllocator,
        guest_id: str,
        poison: int | None,
        *,
        folder: str,
    ) -> None:
        """Map the RAM file the host named at ``path``: only one ``open_ram_file``
        believes, in ``folder`` (the guest's --shm-dir)."""
        self.mm = mm
        self.size = mm.ram_bytes
        self.tag = zlib.crc32(guest_id.encode())
        self.poison = poison
        self.generation = 0
        self.gen_of: dict[int, int] = {}  # allocated block head -> generation
        self.poisoned = bytearray(mm.nr_pages)  # 1: page was filled with poison when freed
        self.data_loss_pages = 0
        self.poison_errors = 0
        self.pages_checked = 0
        self.path = path
        self.folder = folder
        self.fd = -1
        self.map = self._open(path)
        self._poison_page = bytes([poison or 0]) * PAGE_SIZE
        # host_memory with shm: the driver's gate, and the accesses it deferred as
        # (ticket, access), run in order once the host settled runs up to ticket.
        self.gate: Callable[[int, int], int] | None = None
        self._deferred: deque[Deferred] = deque()
        self.final_check_skipped = 0  # accesses left waiting when check_all gave up

    def _open(self, path: str) -> mmap.mmap:
        fd = open_ram_file(path, self.folder, self.size)
        try:
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
        self.generation = gen = (self.generation + 1) & 0xFFFFFFFF
        self.gen_of[pfn] = gen
        if self.gate is not None and self._defer(pfn, order, lambda: self._stamp(pfn, order, gen)):
            return
        self._stamp(pfn, order, gen)

    def write_free(self, pfn: int, order: int) -> None:
        """The boot wrote this block and freed it: its frames hold something, so the
        host holds them, but no allocation's contents the page checks should keep."""
        if self.gate is not None and self._defer(pfn, order, lambda: self._stamp(pfn, order, 0)):
            return
        self._stamp(pfn, order, 0)

    def _defer(self, pfn: int, order: int, access: Callable[[], None]) -> bool:
        """Queue ``access`` if the block's frames are not to be touched yet."""
        assert self.gate is not None
        ticket = self.gate(pfn, order)
        if not ticket and self._deferred:
            ticket = self._deferred[-1].ticket  # never ahead of an earlier access
        if ticket:
            self._deferred.append(Deferred(ticket, pfn, order, access))
        return bool(ticket)

    def follow(self, link: TouchGate, gated: bool) -> None:
        """Take part in the host's memory model through the driver's ``link``: the
        accesses waiting run as it settles touches and are re-gated at evictions;
        with ``gated`` (shm, host_memory) every access waits for its touch."""
        if self.settle not in link.on_settled:
            link.on_settled.append(self.settle)
            link.on_evicted.append(self.regate)
        self.gate = link.gate if gated else None

    def regate(self) -> None:
        """The host evicted frames (it moves them once we acknowledge): an access
        still waiting may be to one of them, so each waiting block is touched again
        (the frames the host no longer holds are reported) and every waiting access
        waits for the touches made now. Order is kept: all wait for the newest."""
        deferred = self._deferred
        if self.gate is None or not deferred:
            return
        ticket = max(self.gate(d.pfn, d.order) for d in deferred)
        if ticket:
            for i, d in enumerate(deferred):
                if d.ticket < ticket:
                    deferred[i] = d._replace(ticket=ticket)

    def settle(self, runs: int) -> None:
        """The host settled touch runs up to ``runs``: do the accesses waiting on them."""
        deferred = self._deferred
        while deferred and deferred[0].ticket <= runs:
            deferred.popleft().access()

    @property
    def waiting(self) -> int:
        """Accesses still waiting for the host to settle their touches."""
        return len(self._deferred)

    def _stamp(self, pfn: int, order: int, gen: int) -> None:
        m = self.map
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
                        log.info(
                            f"poison broken on free frame {p:#x}: its contents changed while free"
                        )
            pack(m, off, p, gen, tag, MAGIC)

    def on_free(self, pfn: int, order: int) -> None:
        gen = self.gen_of.pop(pfn, None)
        if self.gate is not None and self._defer(pfn, order, lambda: self._freed(pfn, order, gen)):
            return
        self._freed(pfn, order, gen)

    def _freed(self, pfn: int, order: int, gen: int | None) -> None:
        self._check(pfn, order, gen)
        if self.poison is not None:
            n = 1 << order
            start = pfn * PAGE_SIZE
            self.map[start : start + n * PAGE_SIZE] = self._poison_page * n
            self.poisoned[pfn : pfn + n] = b"\x01" * n

    def check(self, pfn: int, order: int) -> None:
        """Check the stamps of an allocated block; count and log lost pages."""
        self._check(pfn, order, self.gen_of.get(pfn))

    def _check(self, pfn: int, order: int, gen: int | None) -> None:
        m = self.map
        unpack = STAMP.unpack_from
        for p in range(pfn, pfn + (1 << order)):
            off = p * PAGE_SIZE
            self.pages_checked += 1
            if unpack(m, off) != (p, gen, self.tag, MAGIC):
                self.data_loss_pages += 1
                if self.data_loss_pages <= LOG_FIRST:
                    log.info(f"DATA LOSS: frame {p:#x} lost its contents while allocated")

    def fault_in_all(self, mm: BuddyAllocator) -> int:
        """Before check_all with a gate: touch every allocated block the host does not
        hold; returns the ticket to wait for (0: none)."""
        ticket = self._deferred[-1].ticket if self._deferred else 0
        if self.gate is not None:
            for b in mm.blocks():
                if b.state == "allocated":
                    ticket = max(ticket, self.gate(b.pfn, b.order))
        return ticket

    def check_all(self, mm: BuddyAllocator) -> None:
        """Check every block still allocated (at the end of a run: a loss is a loss)."""
        if self._deferred:
            # The host never settled them (gone, or it killed us): its holes would
            # read as losses that are not the guest's to count.
            self.final_check_skipped = len(self._deferred)
            log.info(
                f"final page check skipped: {len(self._deferred)} accesses still wait "
                "for the host to bring their frames back"
            )
            return
        for b in mm.blocks():
            if b.state == "allocated":
                self.check(b.pfn, b.order)

    def check_image(self, named: str) -> tuple[int, int]:
        """(pages checked, pages lost) of a snapshot image: every page of every block
        this guest holds allocated must read back with its own stamp (the image is
        what a guest restored from it would hold)."""
        fd = open_image_file(named, self.folder, self.size)
        try:
            image = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        checked = lost = 0
        unpack, tag = STAMP.unpack_from, self.tag
        try:
            for b in self.mm.blocks():
                gen = self.gen_of.get(b.pfn)
                if b.state != "allocated" or gen is None:
                    continue  # free, or the balloon's or hinting's (never written)
                for p in range(b.pfn, b.pfn + (1 << b.order)):
                    checked += 1
                    if unpack(image, p * PAGE_SIZE) != (p, gen, tag, MAGIC):
                        lost += 1
                        if lost <= LOG_FIRST:
                            log.info(f"SNAPSHOT LOSS: frame {p:#x} differs in the image")
        finally:
            image.close()
        return checked, lost

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
