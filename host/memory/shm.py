"""The shared-memory backend: each guest's RAM is a real file in /dev/shm.

The host creates the file (the guest's RAM size, sparse), tells the guest its
path, and the guest maps it and really writes its pages. Reported ranges are
really given back to the kernel with fallocate(PUNCH_HOLE|KEEP_SIZE), or
MADV_REMOVE where that is unsupported. The measure of what the host holds is
the kernel's own: the file's allocated blocks (st_blocks), not RSS (MADV_DONTNEED
on shared memory drops RSS but frees nothing).

MADV_FREE is refused on shared mappings, so this backend only discards at once
(``--discard dontneed``).

Files are removed when the session ends, times out, or the host stops. A
host that was killed leaves its folder behind; the next host to start removes
every folder or file whose owning host process is gone.

With ``--host-memory`` the host's memory model (host/memory/hostmem.py) keeps
the books and this backend moves the bytes (``ShmStore``, its ``SwapStore``): a
chunk swapped out has its resident pages copied into the host's swap file
(``SwapFile``: one per host, in --swap-dir, 2 MiB slots, one per chunk that has
frames in swap) and then punched out of the RAM file, so the kernel's own count
falls (once the guest acknowledged the eviction: below); a touch of a swapped
page copies it back before the host answers the touch batch (the guest waits
for that answer before it reads or writes the page: guest/ram.py); a discard of
a swapped page frees its swap. Only the pages that hold data are copied either
way (SEEK_DATA): a page the guest reported touched but never wrote is a hole in
the file, and stays one.

What the two counts are: the model's resident frames are those the guest
reported touching (a fault, which the kernel would fill at once); the file's
blocks are those the guest wrote. They agree where every touched page was
written, which is how the guest uses its pages (it stamps each page it
allocates); a page touched and only read is resident in the model and a hole in
the file (tests/unit/host/memory/test_shm_swap.py holds the two together).
The figures are the kernel's (``resident_pages``), the decisions the model's.

Evictions wait for the guest (``ShmStore``). Between the host's decision to
evict a chunk and the guest hearing of it (the next Notice) the guest may still
read or write the chunk's pages; moving the bytes then lost them (a write
between the copy and the punch, or a read of the hole, in about one run in five
of tests/integration/test_shm_swap.py). So an eviction only *parks* the frames:
the books say swapped, the bytes stay in the RAM file, and the Notice carries an
``evict_id``. The guest stops using those frames (each later access reports a
touch first: guest/ram.py ``regate``) and acknowledges the id in its next
Touched (``evict_ack``), ahead of any touch made since; only then are the parked
frames copied to swap and punched. A touch of a parked frame finds its bytes
where they were. Until the acknowledgement the kernel counts the parked frames
in the RAM file (the figures lag the model by one round trip); a guest that
never acknowledges keeps them there, its own memory and nobody else's data.

The guest believes a path it is told only if it looks like what this makes
(guest/ram.py ``open_ram_file``): a new sparse file per session (O_EXCL, 0600,
one link, nothing written), named ``<id>-<8 hex>.ram``, in --shm-dir or in the
private ``pagehint-host-<pid>`` folder under /dev/shm. Change one, change both.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import re
import shutil
import stat
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

from host.memory.base import Evictions, GuestRam, MemoryBackend
from host.memory.hostmem import (
    CHUNK_PAGES,
    RESIDENT,
    SWAPPED,
    Chunk,
    GuestMemory,
    HostMemory,
    TouchOutcome,
)
from host.memory.punch import allocated_bytes, madv_remove, punch_hole, punch_supported
from pagehint.errors import UsageError

DEFAULT_ROOT = Path("/dev/shm")
PRIVATE_PREFIX = "pagehint-host-"
PID_FILE = "host.pid"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
_RAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}-[0-9a-f]{8}\.ram")  # see attach()
# The host's swap (--host-memory with --swap): on disk, not in /dev/shm (swap in
# memory would hold what it frees), in a private folder of the host's own.
DEFAULT_SWAP_ROOT = Path("/var/tmp")
SWAP_PREFIX = "pagehint-swap-"
SWAP_NAME = "swap"
# A guest acknowledges an eviction Notice on its next write, within a round trip;
# one silent this long is stalled, as the guest's own stall warning judges a host
# (GuestConfig.stall_warning, 5 s). MAX_TOLD bounds the ids kept meanwhile.
ACK_DEADLINE = 5.0
MAX_TOLD = 1024
# Frame-state bytes to 0/1 masks (bytes.translate tables).
_IS_RESIDENT = bytes(1 if i == RESIDENT else 0 for i in range(256))
_IS_SWAPPED = bytes(1 if i == SWAPPED else 0 for i in range(256))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_pid(folder: Path) -> int | None:
    """The pid in the folder's host.pid, if that is this user's own regular file:
    one planted by someone else (or a link to any file) names no host of ours."""
    try:
        fd = os.open(folder / PID_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return None
        return int(os.read(fd, 64).decode("ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)


def _write_pid_file(path: Path) -> None:
    """Write host.pid without following a link planted at its name (it overwrote the
    link's target with a pid) and only into this user's own regular file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise UsageError(
            f"--shm-dir {path.parent}: cannot write {path.name}: {e.strerror} "
            "(a symbolic link there is refused)"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise UsageError(
                f"--shm-dir {path.parent}: {path.name} is not this user's file: refusing to use it"
            )
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)


def _runs(states: bytearray, value: int, off: int, end: int) -> Iterator[tuple[int, int]]:
    """(first, last + 1) of each run of frames in ``value`` within states[off:end]."""
    mark = bytes([value])
    i = states.find(mark, off, end)
    while i >= 0:
        piece = states[i:end]
        j = i + len(piece) - len(piece.lstrip(mark))
        yield i, j
        i = states.find(mark, j, end)


def _extents(fd: int, lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """The byte ranges of [lo, hi) of the file that hold data (SEEK_DATA/SEEK_HOLE:
    holes are skipped, and a hole copied would be written as zeros, allocating)."""
    pos = lo
    while pos < hi:
        try:
            d = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after pos (or past the end)
                return
            raise
        if d >= hi:
            return
        h = min(os.lseek(fd, d, os.SEEK_HOLE), hi)
        yield d, h
        pos = h


def _copy(src: int, src_off: int, dst: int, dst_off: int, n: int) -> None:
    data = os.pread(src, n, src_off)
    if len(data) < n:  # the source ends early: what is past its end reads as zeros
        data += bytes(n - len(data))
    view = memoryview(data)
    while view:
        k = os.pwrite(dst, view, dst_off)
        view = view[k:]
        dst_off += k


def _private_folder(folder: Path, flag: str) -> None:
    """A host's own folder, 0700: one already at the predictable name must be a real
    folder owned by us (not planted by another user)."""
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        st = os.lstat(folder)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise UsageError(
                f"{flag} {folder} exists and is not this user's folder: refusing to use it"
            ) from None
    os.chmod(folder, 0o700)


def _remove_dead_hosts_folders(root: Path, prefix: str, cleaned: list[str]) -> None:
    """Folders ``<prefix><pid>`` (or whose host.pid names a pid) of hosts now gone."""
    for folder in root.glob(f"{prefix}*"):
        pid = _owner_pid(folder)
        if pid is None:
            m = re.fullmatch(rf"{re.escape(prefix)}(\d+)", folder.name)
            pid = int(m.group(1)) if m else None
        if pid is not None and not _pid_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            cleaned.append(str(folder))


class SwapFile:
    """The host's swap: one sparse file, in 2 MiB slots (a chunk's, at its frames'
    offsets). A slot is taken when a chunk first has frames swapped out and given
    back when it has none left; its pages are punched as they are read back or
    discarded, so the file holds what is in swap and no more (the slots are only
    addresses: a free list of them, reused lowest last)."""

    def __init__(self, swap_dir: str | None, page_size: int) -> None:
        self.slot_bytes = CHUNK_PAGES * page_size
        self.free: list[int] = []
        self.slots = 0  # slots ever made (the file's length / slot_bytes)
        self.punch = True  # False where the file system cannot: slots are only reused
        cleaned: list[str] = []
        if swap_dir is None:
            if not DEFAULT_SWAP_ROOT.is_dir():
                raise UsageError(
                    f"--swap: {DEFAULT_SWAP_ROOT} does not exist here; give --swap-dir"
                )
            _remove_dead_hosts_folders(DEFAULT_SWAP_ROOT, SWAP_PREFIX, cleaned)
            self.dir = DEFAULT_SWAP_ROOT / f"{SWAP_PREFIX}{os.getpid()}"
            self.private = True
            self.made = False
            try:
                _private_folder(self.dir, "--swap-dir")
            except OSError as e:
                raise UsageError(f"--swap-dir {self.dir}: cannot create: {e.strerror}") from None
        else:
            if not swap_dir.strip():
                raise UsageError("--swap-dir: give a folder (empty given)")
            self.dir = Path(swap_dir)
            self.private = False
            # As --shm-dir: only the last part is made (a missing parent is a typo).
            if not self.dir.parent.is_dir():
                raise UsageError(
                    f"--swap-dir {self.dir}: its parent folder {self.dir.parent} does not "
                    "exist (the host creates only the last part)"
                )
            if os.path.lexists(self.dir) and not self.dir.is_dir():
                raise UsageError(f"--swap-dir {self.dir}: exists and is not a folder")
            # A folder made here is removed at stop, as the default one is.
            self.made = not os.path.lexists(self.dir)
            try:
                self.dir.mkdir(mode=0o700, exist_ok=True)
            except OSError as e:
                raise UsageError(f"--swap-dir {self.dir}: cannot create: {e.strerror}") from None
        self.orphans_removed = tuple(cleaned)
        # One file per host: the pid in its name keeps two hosts sharing a --swap-dir
        # apart; O_EXCL refuses a file already there (never another's swap reused).
        self.path = self.dir / f"{SWAP_NAME}-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.path)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
                self.path.unlink()  # our pid's, so a host of ours now gone left it
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise UsageError(f"--swap-dir {self.dir}: cannot use: {e.strerror}") from None

    def take(self) -> int:
        if self.free:
            return self.free.pop()
        self.slots += 1
        return self.slots - 1

    def give(self, slot: int) -> None:
        self.release_bytes(slot * self.slot_bytes, self.slot_bytes)
        self.free.append(slot)

    def release_bytes(self, offset: int, length: int) -> None:
        if not self.punch:
            return
        try:
            punch_hole(self.fd, offset, length)
        except OSError as e:
            if punch_supported(e):
                raise
            self.punch = False

    def used_bytes(self) -> int:
        return allocated_bytes(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self.private:
            shutil.rmtree(self.dir, ignore_errors=True)
        elif self.made:
            with contextlib.suppress(OSError):  # not empty: someone else's files too
                self.dir.rmdir()


class ShmStore:
    """One guest's bytes under the host's memory model (hostmem.SwapStore): its RAM
    file, and its chunks' slots in the host's swap file.

    An eviction moves nothing at once: the chunk's resident frames are *parked*
    (the books say swapped, the bytes are still in the RAM file) until the guest
    acknowledges the Notice that named them (``tell``, then ``acknowledged``):
    only then are they copied to swap and punched. Until then the guest may be
    reading or writing them, and a move would lose that. A touch of a parked
    frame finds its bytes where they were; a discard of one frees nothing in swap.
    """

    def __init__(self, ram: ShmRam, swap: SwapFile | None) -> None:
        self.ram = ram
        self.swap = swap
        self.slots: dict[int, int] = {}  # chunk's first frame -> its slot
        # chunk's first frame -> 1 per frame swapped in the books, still in the file.
        self.parked: dict[int, bytearray] = {}
        # chunk's first frame -> its evictions so far: a tell names the eviction it
        # told of, and an acknowledgement moves only a chunk not evicted since.
        self.evictions: dict[int, int] = {}
        self.untold: dict[int, None] = {}  # chunks evicted since the last tell
        self.chunk_at: dict[int, Chunk] = {}
        # (id, chunks with their eviction count, when told), oldest first.
        self.told: deque[tuple[int, list[tuple[Chunk, int]], float]] = deque()
        self.last_id = 0
        self.overdue = 0  # evictions carried out unacknowledged (ACK_DEADLINE)

    def _swap(self) -> SwapFile:
        # The model swaps only with --swap > 0, and then the backend made the file.
        assert self.swap is not None, "swap-out without a swap file"
        return self.swap

    def swap_out(self, ch: Chunk) -> None:
        """Park the chunk's RESIDENT frames (moved once the guest acknowledges)."""
        resident = ch.states.translate(_IS_RESIDENT)
        mask = self.parked.get(ch.base)
        # Frames parked before and still swapped stay parked; the new ones join them.
        self.parked[ch.base] = resident if mask is None else _or(mask, resident)
        self.evictions[ch.base] = self.evictions.get(ch.base, 0) + 1
        self.untold[ch.base] = None
        self.chunk_at[ch.base] = ch

    def tell(self) -> int:
        """The guest is about to hear of the evictions so far: the id it must
        acknowledge before they are moved (0: none)."""
        self._overdue()
        if not self.untold:
            return 0
        self.last_id += 1
        chunks = [(self.chunk_at[b], self.evictions[b]) for b in self.untold]
        self.told.append((self.last_id, chunks, time.monotonic()))
        self.untold = {}
        return self.last_id

    def _overdue(self) -> None:
        """A guest that has not acknowledged an eviction within ACK_DEADLINE (or has
        MAX_TOLD unacknowledged) does not follow the protocol: its oldest evictions
        are carried out anyway, so that what it holds in host memory stays bounded
        (any page it then touches unannounced is its own loss, no one else's)."""
        told = self.told
        now = time.monotonic()
        while told and (len(told) > MAX_TOLD or now - told[0][2] > ACK_DEADLINE):
            self.overdue += 1
            try:
                self.acknowledged(told[0][0])
            except OSError:
                break  # not written: still parked, told again (acknowledged says)

    def acknowledged(self, evict_id: int) -> int | None:
        """The guest stopped using what Notices up to ``evict_id`` named: move those
        frames to swap. Returns frames moved; None for an id never issued."""
        if evict_id > self.last_id:
            return None
        moved = 0
        while self.told and self.told[0][0] <= evict_id:
            _, chunks, _ = self.told.popleft()
            for i, (ch, n) in enumerate(chunks):
                # Evicted again since this was told: the later Notice's
                # acknowledgement moves it (its frames may be in use until then).
                if self.evictions.get(ch.base) != n:
                    continue
                try:
                    moved += self._move(ch)
                except OSError:
                    # Not written (swap full on disk): this chunk and the rest stay
                    # parked, told again with the next Notice.
                    for rest, _ in chunks[i:]:
                        if rest.base in self.parked:
                            self.untold[rest.base] = None
                    raise
        return moved

    def _move(self, ch: Chunk) -> int:
        mask = self.parked.get(ch.base)
        if mask is None or not mask.count(1):
            self.parked.pop(ch.base, None)
            return 0
        swap = self._swap()
        ram = self.ram
        ps = ram.page_size
        slot = self.slots.get(ch.base)
        if slot is None:
            slot = self.slots[ch.base] = swap.take()
        at = ch.base * ps  # the chunk in the RAM file
        to = slot * swap.slot_bytes  # and in the swap file
        for a, b in _runs(mask, 1, 0, len(mask)):
            lo, hi = at + a * ps, at + b * ps
            # Holes are skipped where the swap file's slot is punched clean; where it
            # cannot be punched a reused slot holds another chunk's bytes, so the
            # whole run is written (a hole as zeros).
            for dlo, dhi in _extents(ram.fd, lo, hi) if swap.punch else ((lo, hi),):
                _copy(ram.fd, dlo, swap.fd, to + dlo - at, dhi - dlo)
            # After the copy: what the kernel holds for the guest falls by these.
            ram._punch(lo, hi - lo)
        del self.parked[ch.base]
        return mask.count(1)

    def _unpark(self, ch: Chunk, off: int, end: int) -> bytearray | None:
        """Clear the parked frames of [off, end); the chunk's mask before (None: none)."""
        mask = self.parked.get(ch.base)
        if mask is None:
            return None
        before = bytearray(mask)
        mask[off:end] = bytes(end - off)
        if not mask.count(1):
            del self.parked[ch.base]
        return before

    def swap_in(self, ch: Chunk, off: int, end: int, swapped: int) -> None:
        parked = self._unpark(ch, off, end)  # their bytes never left the file
        slot = self.slots.get(ch.base)
        if slot is not None:
            self._read_back(ch, slot, parked, off, end, release=True)
        self._give_if_empty(ch, swapped)

    def _read_back(
        self, ch: Chunk, slot: int, parked: bytearray | None, off: int, end: int, release: bool
    ) -> None:
        """Copy the chunk's frames of [off, end) that are in its swap slot back into
        the RAM file (``release``: and punch them from the slot)."""
        swap = self._swap()
        ps = self.ram.page_size
        at = ch.base * ps
        to = slot * swap.slot_bytes
        for a, b in _moved(ch.states, parked, off, end):
            for lo, hi in _extents(swap.fd, to + a * ps, to + b * ps):
                _copy(swap.fd, lo, self.ram.fd, at + lo - to, hi - lo)
            if release:
                swap.release_bytes(to + a * ps, (b - a) * ps)

    def drop(self, ch: Chunk, off: int, end: int, swapped: int) -> None:
        parked = self._unpark(ch, off, end)  # the discard punches their bytes itself
        slot = self.slots.get(ch.base)
        if slot is not None and swapped != ch.swapped:
            swap = self._swap()
            ps = self.ram.page_size
            to = slot * swap.slot_bytes
            for a, b in _moved(ch.states, parked, off, end):
                swap.release_bytes(to + a * ps, (b - a) * ps)
        self._give_if_empty(ch, swapped)

    def _give_if_empty(self, ch: Chunk, swapped: int) -> None:
        if swapped == ch.swapped:  # the chunk has no swapped frame left after this
            slot = self.slots.pop(ch.base, None)
            if slot is not None:
                self._swap().give(slot)
            self.parked.pop(ch.base, None)

    def release(self) -> None:
        """The session ended. Unless the OOM killer took the guest, its frames in swap
        are copied back into its RAM file first: the guest may go on in a new session,
        copying its RAM from the old file (guest/ram.py ``move_to``), and a frame
        left in swap would be a hole there, read as zeros."""
        memory = self.ram.memory
        if self.swap is not None:
            if memory is None or memory.killed is None:
                self._restore_all()
            for slot in self.slots.values():
                self.swap.give(slot)
        self.slots = {}
        self.parked = {}
        self.told.clear()
        self.untold = {}

    def _restore_all(self) -> None:
        for base, slot in self.slots.items():
            ch = self.chunk_at[base]
            # The slots are all given back next: no punching them one run at a time.
            self._read_back(ch, slot, self.parked.get(base), 0, len(ch.states), release=False)


def _moved(
    states: bytearray, parked: bytearray | None, off: int, end: int
) -> Iterator[tuple[int, int]]:
    """The runs of [off, end) swapped in the books whose bytes are in the swap file
    (not parked)."""
    if parked is None:
        yield from _runs(states, SWAPPED, off, end)
        return
    swapped = states[off:end].translate(_IS_SWAPPED)
    n = end - off
    piece = bytearray((int.from_bytes(swapped) & ~int.from_bytes(parked[off:end])).to_bytes(n))
    for a, b in _runs(piece, 1, 0, n):
        yield off + a, off + b


def _or(a: bytearray, b: bytes | bytearray) -> bytearray:
    """Two 0/1 masks of one length, or-ed."""
    return bytearray((int.from_bytes(a) | int.from_bytes(b)).to_bytes(len(a)))


class ShmRam(GuestRam):
    def __init__(
        self, backend: ShmBackend, guest_id: str, nr_pages: int, page_size: int, path: Path
    ) -> None:
        self.backend = backend
        self.guest_id = guest_id
        self.nr_pages = nr_pages
        self.page_size = page_size
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(self.fd, nr_pages * page_size)
        self._map: mmap.mmap | None = None
        self.released = False
        # --host-memory: its frames in the host's memory model (None: no model).
        self.memory: GuestMemory | None = None

    @property
    def shm_path(self) -> str:
        return str(self.path)

    def file_fd(self) -> int:
        return self.fd

    @property
    def measured_by_kernel(self) -> bool:
        return True

    def discard(self, ranges: Sequence[tuple[int, int]]) -> int:
        ps = self.page_size
        pages = 0
        # Coalesce adjacent ranges (the device sorted them): fewer system calls.
        runs: list[list[int]] = []
        for pfn, n in ranges:
            if runs and runs[-1][0] + runs[-1][1] == pfn:
                runs[-1][1] += n
            else:
                runs.append([pfn, n])
        for pfn, n in runs:
            self._punch(pfn * ps, n * ps)
            pages += n
        if self.memory is not None:
            self.memory.discard(ranges)  # the books, and the swap of swapped frames
        return pages

    def _punch(self, offset: int, length: int) -> None:
        # madvise(MADV_REMOVE) on the host's shared mapping frees the same tmpfs
        # blocks as fallocate(PUNCH_HOLE|KEEP_SIZE) (shmem's madvise calls the
        # file's fallocate), and from Python it is a C method, not a ctypes call:
        # 3.0 against 4.8 µs for a 4 KiB hole here, a third of an order-0 chain's
        # 32 discards. Where the mapping refuses it, fallocate does it.
        if not self.backend.punch_only:
            try:
                madv_remove(self._mapping(), offset, length)
                return
            except (OSError, ValueError):
                # No mapping to be had (address space, map count) or one that
                # refuses the advice: fallocate frees the same blocks without it,
                # and a real error (of the file itself) shows there.
                self.backend.punch_only = True
        punch_hole(self.fd, offset, length)

    def _mapping(self) -> mmap.mmap:
        if self._map is None:
            self._map = mmap.mmap(self.fd, self.nr_pages * self.page_size, mmap.MAP_SHARED)
        return self._map

    def touched(self, runs: Sequence[tuple[int, int]]) -> int:
        if self.memory is None:
            return 0  # the kernel sees the guest's writes itself
        return self.memory.touched(runs).brought

    def touch(self, runs: Sequence[tuple[int, int]]) -> TouchOutcome:
        if self.memory is None:
            return super().touch(runs)
        return self.memory.touched(runs)  # swapped pages are copied back before it returns

    def take_evicted(self) -> Evictions:
        if self.memory is None:
            return Evictions([], 0)
        runs = self.memory.take_evicted()
        store = self.memory.store
        ack = store.tell() if isinstance(store, ShmStore) else 0
        return Evictions(runs, ack)

    def acknowledged(self, evict_id: int) -> int | None:
        store = None if self.memory is None else self.memory.store
        return store.acknowledged(evict_id) if isinstance(store, ShmStore) else None

    def swapped_pages(self) -> int:
        return 0 if self.memory is None else self.memory.swapped

    @property
    def killed(self) -> str:
        m = self.memory
        return "" if m is None or m.killed is None else m.killed.reason()

    def faults(self) -> tuple[int, int]:
        m = self.memory
        return (0, 0) if m is None else (m.major_faults, m.minor_faults)

    def stall_seconds(self) -> float:
        return 0.0 if self.memory is None else self.memory.stall_seconds

    def resident_pages(self) -> int:
        if self.released:
            return 0
        try:
            return allocated_bytes(self.fd) // self.page_size
        except OSError:
            return 0  # released meanwhile (the metrics thread races the event loop)

    def lazily_free_pages(self) -> int:
        return 0

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self.memory is not None:
            self.memory.release()  # its swap slots (the file goes below)
        if self._map is not None:
            self._map.close()
        os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class ShmBackend(MemoryBackend):
    name = "shm"

    def __init__(
        self,
        shm_dir: str | None,
        discard_mode: str = "dontneed",
        capacity_pages: int | None = None,
        model: HostMemory | None = None,
        swap_dir: str | None = None,
    ) -> None:
        if discard_mode != "dontneed":
            raise UsageError(
                "--discard free is not possible with --backend shm: "
                "MADV_FREE is refused on shared memory; use --discard dontneed"
            )
        self.discard_mode = discard_mode
        self.capacity_pages = capacity_pages
        self.punch_only = False  # the mapping refused MADV_REMOVE: fallocate instead
        self.rams: list[ShmRam] = []
        cleaned: list[str] = []
        if shm_dir is None:
            if not DEFAULT_ROOT.is_dir():
                raise UsageError("--backend shm: /dev/shm does not exist here; give --shm-dir")
            self._clean_private_folders(DEFAULT_ROOT, cleaned)
            self.dir = DEFAULT_ROOT / f"{PRIVATE_PREFIX}{os.getpid()}"
            self.private = True
        else:
            if not shm_dir.strip():
                raise UsageError("--shm-dir: give a folder (empty given)")
            self.dir = Path(shm_dir)
            self.private = False
        try:
            if self.private:
                self._make_private_folder()
            else:
                self._make_shared_folder()
        except OSError as e:
            raise UsageError(f"--shm-dir {self.dir}: cannot create: {e.strerror}") from None
        self._claim_shared_folder(cleaned)
        self.model = model
        # The swap file only where the model may swap (it never does with no swap).
        self.swap: SwapFile | None = None
        if model is not None and model.swap_pages > 0:
            try:
                self.swap = SwapFile(swap_dir, 4096)
            except BaseException:
                self.close()
                raise
            cleaned.extend(self.swap.orphans_removed)
        self.orphans_removed = tuple(cleaned)

    def _make_shared_folder(self) -> None:
        """--shm-dir: made if missing, but only its last part. A missing parent is a
        typo far more often than a wish, and creating a whole tree (as root,
        anywhere) is not the host's business."""
        parent = self.dir.parent
        if not parent.is_dir():
            raise UsageError(
                f"--shm-dir {self.dir}: its parent folder {parent} does not exist "
                "(the host creates only the last part)"
            )
        try:
            self.dir.mkdir(mode=0o700)
        except FileExistsError:
            if not self.dir.is_dir():
                raise UsageError(f"--shm-dir {self.dir}: exists and is not a folder") from None
            return
        os.chmod(self.dir, 0o700)  # whatever the umask

    def _make_private_folder(self) -> None:
        _private_folder(self.dir, "--shm-dir")

    def _clean_private_folders(self, root: Path, cleaned: list[str]) -> None:
        _remove_dead_hosts_folders(root, PRIVATE_PREFIX, cleaned)

    def _claim_shared_folder(self, cleaned: list[str]) -> None:
        pid_file = self.dir / PID_FILE
        owner = _owner_pid(self.dir)
        if owner is not None and owner != os.getpid() and _pid_alive(owner):
            raise UsageError(f"--shm-dir {self.dir}: in use by another host (pid {owner})")
        # A previous host's pid file, its process gone: the RAM files it made are
        # orphans. Only those: a folder no pagehint host claimed, or a file not
        # named as ours, is someone else's and stays.
        if owner is not None:
            me = os.geteuid()
            for f in self.dir.glob("*.ram"):
                with contextlib.suppress(OSError):
                    st = os.lstat(f)
                    # Only this user's own regular files (a RAM file a host of ours made).
                    if _RAM_NAME.fullmatch(f.name) and stat.S_ISREG(st.st_mode) and st.st_uid == me:
                        f.unlink()
                        cleaned.append(str(f))
        _write_pid_file(pid_file)

    def attach(
        self, guest_id: str, nr_pages: int, page_size: int, host_memory: bool = False
    ) -> GuestRam:
        name = _SAFE.sub("_", guest_id)[:64]
        path = self.dir / f"{name}-{os.urandom(4).hex()}.ram"
        ram = ShmRam(self, guest_id, nr_pages, page_size, path)
        if self.model is not None:
            # A guest that does not follow the model is held, never swapped (hostmem.py).
            try:
                memory = self.model.attach(guest_id, nr_pages, host_memory)
            except BaseException:
                ram.release()
                raise
            memory.store = ShmStore(ram, self.swap)
            ram.memory = memory
        self.rams = [r for r in self.rams if not r.released]
        self.rams.append(ram)
        return ram

    def resident_pages_total(self) -> int:
        # One fstat per guest: call it when figures are sampled, not per chain.
        return sum(r.resident_pages() for r in self.rams if not r.released)

    def close(self) -> None:
        for r in self.rams:
            r.release()
        self.rams.clear()
        swap = getattr(self, "swap", None)  # (close() also undoes a failed __init__)
        if swap is not None:
            swap.close()
            self.swap = None
        with contextlib.suppress(FileNotFoundError):
            (self.dir / PID_FILE).unlink()
        if self.private:
            shutil.rmtree(self.dir, ignore_errors=True)
