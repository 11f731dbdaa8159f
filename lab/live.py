"""Live progress lines while guests run: the last timeline sample of each guest."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from pagehint.errors import UsageError
from pagehint.schema import TimelineRow, decode
from pagehint.units import format_size


def last_row(path: Path) -> TimelineRow | None:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 4096))
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return decode(TimelineRow, line)
        except UsageError:  # the first line cut by the seek, or one half written
            continue
    return None


def _mib(v: int | None) -> str:
    return "—" if v is None else format_size(v)


def progress_line(elapsed: float, guests: dict[str, Path]) -> str:
    parts = []
    for name, path in guests.items():
        r = last_row(path)
        if r is None:
            parts.append(f"{name}: starting")
            continue
        parts.append(
            f"{name}: free {_mib(r['free_bytes'])}, isolated {_mib(r['isolated_bytes'])}, "
            f"reported {_mib(r['reported_bytes'])}, host {_mib(r['host_resident_bytes'])}"
        )
    return f"[{elapsed:5.1f}s] " + " | ".join(parts)


class Ticker:
    """Prints a progress line at most every ``period`` seconds."""

    def __init__(self, out: IO[str], period: float) -> None:
        self.out = out
        self.period = period
        self.last = float("-inf")  # the first line at once (monotonic may be near 0)

    def maybe(self, line_fn: Callable[[], str]) -> None:
        now = time.monotonic()
        if now - self.last >= self.period:
            self.last = now
            self.out.write(line_fn() + "\n")
            self.out.flush()
