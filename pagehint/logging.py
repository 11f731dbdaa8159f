"""One line per notable event, on stderr, with time and source.

Through the standard logging module: every source logs to ``pagehint.<kind>``
(``pagehint.guest``, ``pagehint.host``, ...) with its fields on the record
(``source``, and ``guest=`` / ``session=`` where known), at INFO; ``--quiet``
raises a source's level to WARNING. Tests read the records (pytest's caplog);
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


def make_logger(source: str, quiet: bool = False, **fields: str) -> Callable[[str], None]:
    """A function that logs one line from ``source`` at INFO (nothing when ``quiet``).

    ``source`` is what the line shows ("guest[g1]", "host"); its kind before any
    "[" names the logger. ``fields`` go on every record (e.g. guest="g1").
    """
    _root()
    logger = logging.getLogger(f"{ROOT}.{source.split('[', 1)[0] or 'main'}")
    adapter = logging.LoggerAdapter(logger, {"source": source, **fields})
    level = logging.WARNING if quiet else logging.INFO

    def log(msg: str) -> None:
        if level <= logging.INFO:
            adapter.info(msg)

    return log
