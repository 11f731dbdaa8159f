"""Giving file-backed memory back to the kernel: fallocate(PUNCH_HOLE|KEEP_SIZE).

The os module has no punch hole, so libc's fallocate is called through ctypes.
MADV_REMOVE on a shared mapping of the file is the fallback where fallocate
is not supported (it frees the same backing store).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free [offset, offset+length) of the file; its size stays. Raises OSError."""
    if _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def madv_remove(m: mmap.mmap, offset: int, length: int) -> None:
    m.madvise(mmap.MADV_REMOVE, offset, length)


def punch_supported(err: OSError) -> bool:
    return err.errno not in (errno.EOPNOTSUPP, errno.ENOSYS)


def allocated_bytes(fd: int) -> int:
    """What the kernel really holds for the file: its allocated blocks."""
    return os.fstat(fd).st_blocks * 512
