"""Lines our packages log, captured for a test (the code logs to module loggers)."""

from __future__ import annotations

import logging

from pagehint import logging as ours
from pagehint.logging import PACKAGES


class _Lines(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


_installed: list[_Lines] = []


def log_lines() -> list[str]:
    """A list that fills with every line of ours logged at INFO or above, from now
    until the test ends (tests/conftest.py takes the handler away)."""
    lines: list[str] = []
    handler = _Lines(lines)
    for name in PACKAGES:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    _installed.append(handler)
    return lines


def reset() -> None:
    """Take every capture away and our loggers' levels back to unset."""
    for name in PACKAGES:
        logger = logging.getLogger(name)
        for handler in _installed:
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    _installed.clear()
    # Whose lines they were (log_as) ends with the test too: a test without an
    # event loop of its own shares one context with the next.
    ours._CONTEXT.set(())
