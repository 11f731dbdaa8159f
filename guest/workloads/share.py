"""Sharing one event loop between many guests' workloads (`pagehint guest-group`).

In a VM the balloon's interrupt preempts the guest's workload; on an asyncio
loop nothing preempts, and a workload runs until it yields. With one guest per
process that is a slice of 512 operations now and then. With a hundred guests
on one loop, a hundred busy workloads stand in the ready queue, and an
acknowledgement that arrived waits for all of them, several times over (the
stream reader, then the policy), for seconds.

A ``LoopShare`` caps the share of each short window of loop time that
workloads may use together. A workload checks it each time it is resumed;
once the window's budget is spent it sleeps until the next window, so the rest
of every window belongs to the drivers and hinting workers: they wait at most
about one window, however many guests share the loop. Workloads slow down
together (the machine has only so much CPU); the reporting path does not.
"""

from __future__ import annotations

import asyncio
import time


class LoopShare:
    def __init__(self, window: float = 0.01, share: float = 0.6, slice_ops: int = 128) -> None:
        self.window = window
        self.budget = window * share
        # Operations between yields: smaller slices than a lone guest's, so one
        # workload's turn is a fraction of the window.
        self.slice_ops = slice_ops
        self._start = time.perf_counter()
        self._used = 0.0

    def _roll(self, now: float) -> None:
        if now - self._start >= self.window:
            self._start = now
            self._used = 0.0

    async def pass_turn(self, spent: float) -> None:
        """A workload ran ``spent`` seconds since it was last resumed: yield, and do
        not come back until the current window has budget left."""
        now = time.perf_counter()
        self._roll(now)
        self._used += spent
        await asyncio.sleep(0)
        while True:
            now = time.perf_counter()
            self._roll(now)
            if self._used < self.budget:
                return
            await asyncio.sleep(self._start + self.window - now)


# Set by `pagehint guest-group` before its guests start; None: a lone guest.
shared: LoopShare | None = None
