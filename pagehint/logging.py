"""One line per notable event, on stderr, with time and source.

Through the standard logging module: every source logs to ``pagehint.<kind>``
(``pagehint.guest``, ``pagehint.host``, ...) with its fields on the record
(``source``, and ``guest=`` / ``session=`` where known), at INFO; ``--quiet``
raises a source's level to WARNING, and ``-v`` lowers it to DEBUG: a line per
chain, sent and answered, on both sides. Tests read the records (pytest's caplog);
the line on stderr stays ``HH:MM:SS source: message``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TextIO

ROOT = "pagehint"


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when a line is logged (not when created)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def _root() -> logging.Logger:
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, _Stderr) for h in root.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(source)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    if root.level == logging.NOTSET:  # unset (or reset by a test): ours decides
        root.setLevel(logging.DEBUG)
    return root


class EventLog:
    """One source's lines: call it for an event (INFO, silenced by ``quiet``);
    ``debug`` for the detail ``-v`` asks for (a line per chain)."""

    def __init__(
        self, adapter: logging.LoggerAdapter[logging.Logger], quiet: bool, verbose: bool
    ) -> None:
        self._adapter = adapter
        self.level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO

    @property
    def verbose(self) -> bool:
        return self.level <= logging.DEBUG

    def __call__(self, msg: str) -> None:
        if self.level <= logging.INFO:
            self._adapter.info(msg)

    def debug(self, msg: str) -> None:
        if self.level <= logging.DEBUG:
            self._adapter.debug(msg)


def make_logger(source: str, quiet: bool = False, verbose: bool = False, **fields: str) -> EventLog:
    """Lines from ``source`` at INFO (nothing when ``quiet``; DEBUG too when ``verbose``).

    ``source`` is what the line shows ("guest[g1]", "host"); its kind before any
    "[" names the logger. ``fields`` go on every record (e.g. guest="g1").
    """
    _root()
    logger = logging.getLogger(f"{ROOT}.{source.split('[', 1)[0] or 'main'}")
    return EventLog(logging.LoggerAdapter(logger, {"source": source, **fields}), quiet, verbose)


def debug_of(log: Callable[[str], None] | None) -> Callable[[str], None] | None:
    """``log``'s debug lines if it is a verbose EventLog, else None: callers on a
    hot path test for None once, not a level per chain."""
    if isinstance(log, EventLog) and log.verbose:
        return log.debug
    return None
