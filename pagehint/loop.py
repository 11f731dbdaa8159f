"""Choosing the event loop: uvloop when asked or available, asyncio otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from pagehint.errors import UsageError

T = TypeVar("T")


def loop_factory(choice: str) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """Return (factory, name); factory None means asyncio's default loop."""
    if choice == "asyncio":
        return None, "asyncio"
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise UsageError("--loop uvloop: uvloop is not installed") from None
        return None, "asyncio"
    return uvloop.new_event_loop, "uvloop"


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    factory, _ = loop_factory(choice)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
