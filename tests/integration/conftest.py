"""Integration fixtures: real processes, and a check that none leaves files behind."""

from __future__ import annotations

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
    assert after <= before, f"left behind: {sorted(map(str, after - before))}"
