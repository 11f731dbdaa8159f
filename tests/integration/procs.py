"""Start real `pagehint host` / `pagehint guest` processes for integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

PAGEHINT = [sys.executable, "-m", "pagehint"]


def wait_until(cond: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Procs:
    tmp: Path
    running: list[subprocess.Popen[str]] = field(default_factory=list)

    def host(
        self, *args: str, listen: str = "127.0.0.1:0", env: dict[str, str] | None = None
    ) -> tuple[str, subprocess.Popen[str]]:
        ready = self.tmp / f"host-{len(self.running)}.addr"
        ready.unlink(missing_ok=True)
        log = open(self.tmp / f"host-{len(self.running)}.log", "w")  # noqa: SIM115
        p = subprocess.Popen(
            [*PAGEHINT, "host", "--listen", listen, "--ready-file", str(ready), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.running.append(p)
        wait_until(lambda: ready.exists() or p.poll() is not None, 20, "host to listen")
        if p.poll() is not None:
            raise AssertionError(
                f"host exited: {(self.tmp / f'host-{len(self.running) - 1}.log').read_text()}"
            )
        return ready.read_text().strip(), p

    def guest(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [*PAGEHINT, "guest", "--json", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.running.append(p)
        return p

    def cleanup(self) -> None:
        # SIGTERM first, so hosts remove their RAM folders; SIGKILL what lingers.
        for p in self.running:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.running:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def finish(p: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"guest exited {p.returncode}: {err[-3000:]}"
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    summary["_stderr"] = err
    return summary


def run_cli(args: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PAGEHINT, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    ps = Procs(tmp_path)
    try:
        yield ps
    finally:
        ps.cleanup()
