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
from collections import deque


class LoopShare:
    """Workloads take turns, one slice at a time, within a budget per window.

    A workload ending a slice joins a queue; a dispatcher lets the queue's head
    run its next slice, then, from the back of the loop's ready queue, the next
    one. Whatever became ready meanwhile — a host's answer read from a stream, the
    reporter it wakes, a timer — runs between two slices, as an interrupt gets in
    between a VM's instructions: it waits for at most one slice, not for every
    workload that was ready before it. (Earlier every capped workload woke at each
    window's start and ran back to back until the budget was spent, so an answer
    waited behind up to the whole budget once per hop, and a hundred workloads
    re-checked the budget a hundred times a window.) Once the window's budget is
    spent the dispatcher waits for the next window.
    """

    def __init__(self, window: float = 0.01, share: float = 0.6, slice_ops: int = 128) -> None:
        self.window = window
        self.budget = window * share
        # Operations between yields: smaller slices than a lone guest's, so one
        # workload's turn is a fraction of the window.
        self.slice_ops = slice_ops
        self._start = time.perf_counter()
        self._used = 0.0
        self._queue: deque[asyncio.Future[None]] = deque()
        self._dispatching = False

    def _roll(self, now: float) -> None:
        if now - self._start >= self.window:
            self._start = now
            self._used = 0.0

    async def pass_turn(self, spent: float) -> None:
        """A workload ran ``spent`` seconds since it was last resumed: wait for its
        next turn."""
        self._roll(time.perf_counter())
        self._used += spent
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        self._queue.append(turn)
        if not self._dispatching:
            self._dispatching = True
            loop.call_soon(self._dispatch, loop)
        await turn

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Let the next waiting workload run one slice; come back after it."""
        now = time.perf_counter()
        self._roll(now)
        if self._used >= self.budget:
            loop.call_at(loop.time() + (self._start + self.window - now), self._dispatch, loop)
            return
        while self._queue:
            turn = self._queue.popleft()
            if not turn.done():  # a cancelled waiter (its guest stopped) is skipped
                turn.set_result(None)
                loop.call_soon(self._dispatch, loop)  # after that slice, and what it woke
                return
        self._dispatching = False


# Set by `pagehint guest-group` before its guests start; None: a lone guest.
shared: LoopShare | None = None
