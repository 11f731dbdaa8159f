"""Reading the small files a user names (scenarios, token lists, TLS files, guest
lists): regular files only, and only so much of them.

A device (/dev/zero) would be read without end and a FIFO would block the
start for ever; neither is a file of settings. Each problem is one line naming
the flag (or what the file is) and the path.
"""

from __future__ import annotations

import os
import stat

from pagehint.errors import UsageError

MAX_SETTINGS_BYTES = 1 << 20


def read_small(path: str, what: str, limit: int = MAX_SETTINGS_BYTES) -> bytes:
    """The bytes of the regular file ``path`` (at most ``limit``); ``what`` starts
    the error line ("--tokens", "scenario")."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not wait.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise UsageError(f"{what} {path}: cannot read: {e.strerror or e}") from None
    try:
        # The kind first: a buffered file object cannot even be made on a folder.
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise UsageError(f"{what} {path}: a folder, not a file")
        if not stat.S_ISREG(mode):
            raise UsageError(f"{what} {path}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise UsageError(f"{what} {path}: cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        size = f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit} bytes"
        raise UsageError(f"{what} {path}: larger than {size}")
    return data


def read_small_text(path: str, what: str, limit: int = MAX_SETTINGS_BYTES) -> str:
    try:
        return read_small(path, what, limit).decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path}: cannot read: not UTF-8 text") from None
