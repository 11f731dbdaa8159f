"""Log lines that a hostile or broken guest could otherwise repeat thousands of times.

The first line of each kind is logged at once; further ones within ``interval``
seconds are only counted. The next line of that kind after the interval says
how many were held back, and ``flush`` (called periodically, and at the end)
logs one summary line per kind that is still holding some back. Counters
elsewhere stay exact; only the log is thinned.
"""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """Lines to ``logger`` at INFO, thinned (see the module's doc)."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.log = logger.info
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._example: dict[str, str] = {}

    def note(self, key: str, line: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        last = self._last.get(key)
        if last is None or now - last >= self.interval:
            self._last[key] = now
            n = self._suppressed.pop(key, 0)
            self._example.pop(key, None)
            self.log(line if not n else f"{line} (and {n} more like this before it)")
            return
        self._suppressed[key] = self._suppressed.get(key, 0) + 1
        self._example[key] = line

    def flush(self, now: float | None = None, force: bool = False) -> None:
        """Summarise the kinds whose interval has passed (all of them with ``force``)."""
        now = time.monotonic() if now is None else now
        for key, n in list(self._suppressed.items()):
            if force or now - self._last[key] >= self.interval:
                self.log(f"{n} more like this in the last {self.interval:g}s: {self._example[key]}")
                self._last[key] = now
                del self._suppressed[key]
                del self._example[key]
