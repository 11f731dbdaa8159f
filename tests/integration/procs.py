"""Real `pagehint host` / `pagehint guest` processes for integration tests.

A thin layer over lab.procs.ProcessGroup — the same code the lab commands use
to start, wait for and stop processes — with names chosen for the test.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from lab.procs import PAGEHINT, ProcessGroup
from pagehint.schema import GuestSummary, field_names

__all__ = ["PAGEHINT", "Procs", "free_port", "procs", "run_cli", "wait_until"]


def wait_until(cond: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Procs:
    def __init__(self, tmp: Path) -> None:
        self.group = ProcessGroup(tmp)
        self.names: dict[int, str] = {}

    def host(self, *args: str, listen: str = "127.0.0.1:0") -> tuple[str, subprocess.Popen[str]]:
        return self.group.start_host(args, name=f"host-{len(self.group.procs)}", listen=listen)

    def guest(self, *args: str) -> subprocess.Popen[str]:
        name = f"guest-{len(self.group.procs)}"
        p = self.group.start_guest(args, name)
        self.names[p.pid] = name
        return p

    def finish(self, p: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
        """The guest's JSON summary (it must exit 0), with its log as ``_stderr``."""
        name = self.names[p.pid]
        summary = self.group.guest_summary(p, name, timeout)
        # Every real run checks the schema: no field the schema does not document.
        unknown = set(summary) - set(field_names(GuestSummary))
        assert not unknown, f"summary fields missing from pagehint.schema: {sorted(unknown)}"
        out: dict[str, Any] = dict(summary)
        out["_stderr"] = self.group.log_text(name)
        return out


def run_cli(args: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PAGEHINT, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    ps = Procs(tmp_path)
    try:
        yield ps
    finally:
        ps.group.close()  # SIGTERM first, so hosts remove their RAM folders
