"""Log lines that a hostile or broken guest could otherwise repeat thousands of times.

The first line of each kind is logged at once; further ones within ``interval``
seconds are only counted, and ``flush`` (the host's janitor calls it every
second) logs one summary line per kind: "N more like this". Counters elsewhere
stay exact; only the log is thinned.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimitedLog:
    def __init__(self, log: Callable[[str], None], interval: float = 10.0) -> None:
        self.log = log
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._example: dict[str, str] = {}

    def note(self, key: str, line: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        last = self._last.get(key)
        if last is None or now - last >= self.interval:
            self._last[key] = now
            self.log(line)
            return
        self._suppressed[key] = self._suppressed.get(key, 0) + 1
        self._example[key] = line

    def flush(self, now: float | None = None) -> None:
        """Summarise the kinds whose interval has passed since their last logged line."""
        now = time.monotonic() if now is None else now
        for key, n in list(self._suppressed.items()):
            if now - self._last[key] >= self.interval:
                self.log(f"{n} more like this in the last {self.interval:g}s: {self._example[key]}")
                self._last[key] = now
                del self._suppressed[key]
                del self._example[key]
