"""One line per notable event, on stderr, with time and source.

Every module logs to its own logger, ``logging.getLogger(__name__)``: events at
INFO, the detail ``-v`` asks for (a line per chain, on both sides) at DEBUG.
A process's entry point (the CLI) calls ``setup`` once: one stderr handler on
our packages' loggers, at INFO, WARNING with ``--quiet`` (nothing of ours is
logged above INFO: quiet is silent), DEBUG with ``-v``. Whose line it is comes
from ``log_as``: a guest's task calls ``log_as("guest[g1]", guest="g1")`` and
every line logged in that task, and in the tasks it starts, carries
``source="guest[g1]"`` and ``guest="g1"`` on its record (a contextvar, so the
guests of a group in one process keep theirs apart); where nothing was said,
the source is the logger's package ("host", "lab"). Tests read the records
(pytest's caplog); the line on stderr stays ``HH:MM:SS source: message``.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from typing import Any, TextIO

PACKAGES = ("guest", "host", "lab", "pagehint", "virtqueue")

# (source, fields): whose lines these are, in this context.
_CONTEXT: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "pagehint_log_context", default=()
)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when a line is logged (not when created)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


_base_factory = logging.getLogRecordFactory()


def _record(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """Every record made in this process carries its context's source and fields."""
    record = _base_factory(*args, **kwargs)
    record.source = record.name.split(".", 1)[0]
    for key, value in _CONTEXT.get():
        setattr(record, key, value)
    return record


def _install() -> None:
    if logging.getLogRecordFactory() is not _record:
        logging.setLogRecordFactory(_record)
    for name in PACKAGES:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _Stderr) for h in logger.handlers):
            handler = _Stderr()
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(source)s: %(message)s", "%H:%M:%S")
            )
            logger.addHandler(handler)


def setup(quiet: bool = False, verbose: bool = False) -> None:
    """This process's lines: on stderr, at INFO (WARNING when ``quiet``, DEBUG when
    ``verbose``). Called by the entry point, once per command."""
    _install()
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    for name in PACKAGES:
        logging.getLogger(name).setLevel(level)


def log_as(source: str, **fields: str) -> None:
    """Lines logged from here on in this context (this task, and the tasks it
    starts) show ``source`` ("guest[g1]") and carry ``fields`` (guest="g1")."""
    _install()
    _CONTEXT.set((("source", source), *fields.items()))
