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

The guest believes a path it is told only if it looks like what this makes
(guest/ram.py ``open_ram_file``): a new sparse file per session (O_EXCL, 0600,
one link, nothing written), named ``<id>-<8 hex>.ram``, in --shm-dir or in the
private ``pagehint-host-<pid>`` folder under /dev/shm. Change one, change both.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from host.memory.base import GuestRam, MemoryBackend
from host.memory.punch import allocated_bytes, madv_remove, punch_hole, punch_supported
from pagehint.errors import UsageError

DEFAULT_ROOT = Path("/dev/shm")
PRIVATE_PREFIX = "pagehint-host-"
PID_FILE = "host.pid"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
_RAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}-[0-9a-f]{8}\.ram")  # see attach()


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

    @property
    def shm_path(self) -> str:
        return str(self.path)

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
        return pages

    def _punch(self, offset: int, length: int) -> None:
        if self.backend.use_madv_remove:
            madv_remove(self._mapping(), offset, length)
            return
        try:
            punch_hole(self.fd, offset, length)
        except OSError as e:
            if punch_supported(e):
                raise
            self.backend.use_madv_remove = True
            madv_remove(self._mapping(), offset, length)

    def _mapping(self) -> mmap.mmap:
        if self._map is None:
            self._map = mmap.mmap(self.fd, self.nr_pages * self.page_size, mmap.MAP_SHARED)
        return self._map

    def touched(self, runs: Sequence[tuple[int, int]]) -> int:
        return 0  # the kernel sees the guest's writes itself

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
        if self._map is not None:
            self._map.close()
        os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class ShmBackend(MemoryBackend):
    name = "shm"

    def __init__(
        self, shm_dir: str | None, discard_mode: str = "dontneed", capacity_pages: int | None = None
    ) -> None:
        if discard_mode != "dontneed":
            raise UsageError(
                "--discard free is not possible with --backend shm: "
                "MADV_FREE is refused on shared memory; use --discard dontneed"
            )
        self.discard_mode = discard_mode
        self.capacity_pages = capacity_pages
        self.use_madv_remove = False
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
        """The host's own folder, 0700. One that already exists at the predictable
        name must be a real folder owned by us (not planted by another user)."""
        try:
            self.dir.mkdir(mode=0o700)
        except FileExistsError:
            st = os.lstat(self.dir)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                raise UsageError(
                    f"{self.dir} exists and is not this user's folder: refusing to use it"
                ) from None
        os.chmod(self.dir, 0o700)

    def _clean_private_folders(self, root: Path, cleaned: list[str]) -> None:
        for folder in root.glob(f"{PRIVATE_PREFIX}*"):
            pid = _owner_pid(folder)
            if pid is None:
                m = re.fullmatch(rf"{PRIVATE_PREFIX}(\d+)", folder.name)
                pid = int(m.group(1)) if m else None
            if pid is not None and not _pid_alive(pid):
                shutil.rmtree(folder, ignore_errors=True)
                cleaned.append(str(folder))

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

    def attach(self, guest_id: str, nr_pages: int, page_size: int) -> GuestRam:
        name = _SAFE.sub("_", guest_id)[:64]
        path = self.dir / f"{name}-{os.urandom(4).hex()}.ram"
        ram = ShmRam(self, guest_id, nr_pages, page_size, path)
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
        with contextlib.suppress(FileNotFoundError):
            (self.dir / PID_FILE).unlink()
        if self.private:
            shutil.rmtree(self.dir, ignore_errors=True)
