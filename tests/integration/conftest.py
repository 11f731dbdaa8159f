"""Integration fixtures: real processes, and a check that none leaves files behind."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import pytest

from tests.integration.procs import procs

__all__ = ["procs"]


@pytest.fixture(autouse=True, scope="session")
def no_ram_folders_left_behind() -> Iterator[None]:
    """After the whole integration run, no host's RAM folder may remain in /dev/shm."""
    root = pathlib.Path("/dev/shm")
    before = set(root.glob("pagehint-host-*")) if root.is_dir() else set()
    yield
    after = set(root.glob("pagehint-host-*")) if root.is_dir() else set()
    # A folder whose host is still running is not left behind (another run's host
    # may share the machine); one whose host is gone is.
    orphans = {f for f in after - before if not _alive(f.name.rsplit("-", 1)[-1])}
    assert not orphans, f"left behind: {sorted(map(str, orphans))}"


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
