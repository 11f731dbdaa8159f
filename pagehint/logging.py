"""One line per notable event, on stderr, with time and source."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def make_logger(source: str, quiet: bool = False) -> Callable[[str], None]:
    def log(msg: str) -> None:
        if quiet:
            return
        ts = time.strftime("%H:%M:%S", time.localtime())
        sys.stderr.write(f"{ts} {source}: {msg}\n")
        sys.stderr.flush()

    return log
