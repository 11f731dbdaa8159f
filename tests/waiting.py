"""Bounded waits on conditions for async tests (never bare sleeps)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_for(
    cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.005
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
