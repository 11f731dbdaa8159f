"""The device as the hinting core sees it, like the kernel's page_reporting_dev_info.

A device has a minimum order, a capacity (most blocks per report) and
``async report(batch)``, which returns once the host has acknowledged every
block in the batch and raises ReportError otherwise. Until it returns, the
blocks stay isolated: the host may be discarding them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

Block = tuple[int, int]  # (pfn, order)


class ReportError(Exception):
    """The host did not take a report; its pages must go back unreported.

    ``reason`` is a short key for counting: "unavailable" (nothing was sent),
    "cancelled" (fenced, never discarded), a refusal's rule, "discard_failed".
    """

    def __init__(self, message: str, reason: str = "failed") -> None:
        super().__init__(message)
        self.reason = reason


class ReportingDevice(Protocol):
    """What a policy needs of a device (page_reporting_dev_info): the smallest order
    it takes, the most blocks per report, and report(), which returns only once
    the device is done with the blocks and raises ReportError if it did not take
    them. It must never return or raise while the device may still discard them."""

    min_order: int
    capacity: int

    async def report(self, batch: Sequence[Block]) -> None: ...


class LoopbackDevice:
    """An in-process device for fast deterministic tests.

    Records every batch it acknowledged. ``delay`` makes each report slow;
    ``fail_next`` fails that many reports; ``fail_when`` fails a report when it
    returns True for the batch. ``on_report`` sees each batch while it is in
    flight (tests use it to allocate concurrently).
    """

    def __init__(self, capacity: int = 32, min_order: int = 0, delay: float = 0.0) -> None:
        self.capacity = capacity
        self.min_order = min_order
        self.delay = delay
        self.fail_next = 0
        self.fail_when: Callable[[Sequence[Block]], bool] | None = None
        self.on_report: Callable[[Sequence[Block]], None] | None = None
        self.batches: list[list[Block]] = []
        self.attempts = 0
        self.in_flight = 0

    @property
    def blocks(self) -> list[Block]:
        return [b for batch in self.batches for b in batch]

    @property
    def reported_pages(self) -> int:
        return sum(1 << o for _, o in self.blocks)

    async def report(self, batch: Sequence[Block]) -> None:
        self.attempts += 1
        if len(batch) > self.capacity:
            raise ReportError(
                f"batch of {len(batch)} exceeds capacity {self.capacity}", reason="too_many_ranges"
            )
        self.in_flight += 1
        try:
            if self.on_report is not None:
                self.on_report(batch)
            if self.delay:
                await asyncio.sleep(self.delay)
            else:
                await asyncio.sleep(0)
            if self.fail_next > 0:
                self.fail_next -= 1
                raise ReportError("loopback device: failing on demand", reason="injected")
            if self.fail_when is not None and self.fail_when(batch):
                raise ReportError("loopback device: fail_when matched", reason="injected")
            self.batches.append(list(batch))
        finally:
            self.in_flight -= 1
