"""What every hinting policy shares: counters, the report-and-put-back step, backoff."""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from guest.hinting.device import Block, ReportError, ReportingDevice
from guest.mm.buddy import BuddyAllocator
from guest.mm.constants import FREE, ISOLATED, PAGE_SIZE, STATE_MASK
from guest.mm.exact import containing_block
from guest.sched import KernelWork
from pagehint.config import HintingConfig
from pagehint.ratelog import RateLimitedLog
from pagehint.stats import LatencyHistogram

POLICY_LOG = logging.getLogger("guest.hinting.policy")
ACK_SAMPLES = 1_000_000  # keep at most this many ack latencies (oldest dropped)


@dataclass
class HintingStats:
    reported_blocks: int = 0
    reported_pages: int = 0
    reports: int = 0
    failures: int = 0
    # Failed reports by reason ("unavailable", "cancelled", "discard_failed", a refusal rule).
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    stale: int = 0
    walks: int = 0  # bitmap walks, or reporting passes
    isolation_refused: int = 0  # blocks left free because isolating them would breach wmark_min
    isolated_peak_pages: int = 0
    worker_seconds: float = 0.0
    # Reports still unanswered when the policy stopped (their blocks stay isolated).
    abandoned_reports: int = 0
    abandoned_pages: int = 0
    # Acknowledged reports' latencies (ms), the newest ACK_SAMPLES of them: the
    # summary's percentiles and --ack-log both read this.
    ack_latency_ms: list[float] = field(default_factory=list)
    ack_histogram: LatencyHistogram = field(default_factory=LatencyHistogram)

    @property
    def reported_bytes(self) -> int:
        return self.reported_pages * PAGE_SIZE


@dataclass(frozen=True)
class _Sent:
    """What the report step came back with: the device's refusal (None: acknowledged),
    how long it took, and whether the policy was cancelled while it waited."""

    error: ReportError | None
    elapsed_ms: float
    cancelled: bool


def _ended(task: asyncio.Future[None], answered: asyncio.Future[None]) -> None:
    """A report task's end, however it came: its policy is woken (a task cancelled
    before its first step never ran the ``finally`` that does so), and its outcome
    is read, so one that ends after it was abandoned (its error read by nobody) is
    not logged as a lost exception."""
    if not answered.done():
        answered.set_result(None)
    if not task.cancelled():
        task.exception()


def _log_late_bug(task: asyncio.Future[None]) -> None:
    """An abandoned report that ends in a bug (not a device's refusal): nobody waits
    for it any more, so it is logged here rather than lost."""
    error = None if task.cancelled() else task.exception()
    if error is not None and not isinstance(error, ReportError):
        POLICY_LOG.error(f"an abandoned report ended in a bug: {type(error).__name__}: {error}")


class PolicyRuleError(Exception):
    """A policy broke the contract (docs/policies.md), e.g. reported a block it did
    not isolate. Raised before anything reaches the device."""


class DeviceTooSmall(Exception):
    """The device cannot take the policy's reports (the kernel's -ENOSPC at registration)."""


class Policy(abc.ABC):
    """A hinting policy: installs the allocator hook and runs an async worker."""

    name = "abstract"

    def __init__(
        self,
        cfg: HintingConfig,
        mm: BuddyAllocator,
        device: ReportingDevice | None,
    ) -> None:
        self.cfg = cfg
        self.mm = mm
        self.device = device
        self.capacity = cfg.effective_capacity()
        # The device is the source of truth for the smallest order it takes.
        self.order = max(cfg.order, device.min_order if device is not None else 0)
        if device is not None and device.capacity < self.capacity:
            raise DeviceTooSmall(
                f"the device takes at most {device.capacity} ranges per report but the "
                f"{cfg.policy} policy reports {self.capacity}: start the guest with "
                f"--capacity {device.capacity} (or the host with a larger --max-chain-ranges)"
            )
        self.stats = HintingStats()
        # A line to the guest's log (docs/policies.md). One logger for every policy,
        # under the guest's: a policy of one's own lives in a module of its own
        # (FILE.py:CLASS, MODULE:CLASS) whose logger no handler would hear.
        self.log = POLICY_LOG.info
        # Failed reports: one line per reason per 10 s (the counters stay exact).
        self.problems = RateLimitedLog(POLICY_LOG)
        self._consecutive_failures = 0
        # Blocks currently out with the device (tests check allocations against it).
        self.in_flight: list[Block] = []
        # Blocks of reports still unanswered when the policy stopped: never put back.
        self.abandoned: list[Block] = []
        # Called after each acknowledged report is booked (the timeline's event rows).
        self.on_ack: list[Callable[[], None]] = []
        # Contract breaks found by report_batch (a guarded outside policy shares its list).
        self.rule_errors: list[str] = []
        # Under way while the worker runs a pass (the workload yields to it between
        # operations) or has a report out (the workload polls: guest/sched.py).
        self.kernel_work = KernelWork()

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    def idle(self) -> bool:
        """True when no work is pending or running."""

    def note_isolated(self) -> None:
        now = self.mm.nr_isolated_pages
        if now > self.stats.isolated_peak_pages:
            self.stats.isolated_peak_pages = now

    def backoff(self) -> float:
        """Seconds to wait after the latest failure: doubling from backoff_min."""
        n = max(0, self._consecutive_failures - 1)
        return float(min(self.cfg.backoff_max, self.cfg.backoff_min * (2.0**n)))

    async def report_batch(self, batch: list[Block], mark: bool, to_tail: bool) -> bool:
        """Report isolated blocks, then drain them back. False if the report failed.

        Two steps, as the kernel's page_reporting_cycle: the report (``_report_step``),
        then the drain (``drain``, page_reporting_drain) — marked reported only
        when ``mark`` and the host acknowledged. A report cancelled mid-way is
        drained and booked like any other, then the cancellation goes on.
        """
        if not batch:
            return True
        with self.kernel_work.waiting_on_host():
            sent = await self._report_step(batch)
        self.drain(batch, reported=mark and sent.error is None, to_tail=to_tail)
        if sent.error is None:
            self._book_done(batch, sent.elapsed_ms)
        else:
            self._book_failed(batch, sent.error)
        if sent.cancelled:
            raise asyncio.CancelledError
        return sent.error is None

    async def _report_step(self, batch: list[Block]) -> _Sent:
        """The report step: the blocks go to the device and stay isolated for as long
        as it has them — report() returns or raises only when the device can no
        longer discard them, however long that takes (and for good, if abandoned:
        see below).

        Cancelled mid-report (the policy is stopping), the report is still let
        finish, for up to ``stop_grace`` seconds: the device may be discarding the
        blocks right now (the kernel's page_reporting_unregister likewise waits for
        a running pass). A report still unanswered after that is abandoned with its
        blocks left isolated — never drained while the host may discard them — and
        counted; the cancellation goes on from here.
        """
        assert self.device is not None
        if not self.cfg.unsafe_skip_isolation:
            self.check_batch(batch)
        self.in_flight = batch
        t0 = time.perf_counter()
        # The report runs as a task of its own, so cancelling this one does not cut
        # it short; it wakes this task itself as it ends. (asyncio.shield did the
        # same with one more pass of the event loop between the host's answer and
        # this task: on a loop shared by a hundred busy guests, a pass is where an
        # acknowledgement waits.)
        answered = asyncio.get_running_loop().create_future()
        report = asyncio.ensure_future(self._device_report(batch, answered))
        report.add_done_callback(lambda task: _ended(task, answered))
        cancelled = False
        try:
            await answered
        except asyncio.CancelledError:
            cancelled = True
            await asyncio.wait({report}, timeout=self.cfg.stop_grace)
        self.in_flight = []
        if not report.done():
            self._abandon(batch)
            report.add_done_callback(_log_late_bug)
            raise asyncio.CancelledError
        error = report.exception() if not report.cancelled() else asyncio.CancelledError()
        if error is not None and not isinstance(error, ReportError):
            # A bug, not a failed report: the device did not say it is done with the
            # blocks, so they stay isolated; let it show. (A broken rule was caught
            # before anything was sent: no device holds those blocks.)
            if not isinstance(error, PolicyRuleError):
                self.abandoned.extend(batch)
            raise error
        return _Sent(error, (time.perf_counter() - t0) * 1000, cancelled)

    async def _device_report(self, batch: list[Block], answered: asyncio.Future[None]) -> None:
        """The device's report; ``answered`` is set as it ends, however it ends."""
        assert self.device is not None
        try:
            await self.device.report(batch)
        finally:
            if not answered.done():
                answered.set_result(None)

    def drain(self, batch: Sequence[Block], reported: bool, to_tail: bool = True) -> None:
        """page_reporting_drain(): the blocks back on their free lists, without the
        hook; marked reported when ``reported`` (the allocator marks a block only
        if it is still free at its order after the put-back, as the kernel does)."""
        skip_isolation = self.cfg.unsafe_skip_isolation
        for pfn, order in batch:
            if not skip_isolation:
                self.mm.putback(pfn, order, to_tail=to_tail)
            if reported:
                self.mm.mark_reported(pfn, order)

    def _abandon(self, batch: list[Block]) -> None:
        """A report still unanswered after the stop grace: its blocks stay isolated."""
        self.stats.abandoned_reports += 1
        self.stats.abandoned_pages += sum(1 << o for _, o in batch)
        self.abandoned.extend(batch)
        self.log(
            f"stopping with a report of {len(batch)} blocks still unanswered after "
            f"{self.cfg.stop_grace:g}s: its blocks stay isolated"
        )

    def _book_done(self, batch: list[Block], elapsed_ms: float) -> None:
        """Count an acknowledged report and tell the listeners (timeline rows)."""
        self._consecutive_failures = 0
        self.stats.reports += 1
        self.stats.reported_blocks += len(batch)
        self.stats.reported_pages += sum(1 << o for _, o in batch)
        self.stats.ack_histogram.observe(elapsed_ms / 1000)
        lat = self.stats.ack_latency_ms
        lat.append(elapsed_ms)
        if len(lat) > ACK_SAMPLES:
            del lat[: ACK_SAMPLES // 2]
        for listener in self.on_ack:
            listener()

    def _book_failed(self, batch: list[Block], error: ReportError) -> None:
        """Count a failed report by reason; one log line per reason per 10 s."""
        self.stats.failures += 1
        by = self.stats.failures_by_reason
        by[error.reason] = by.get(error.reason, 0) + 1
        self._consecutive_failures += 1
        self.problems.note(error.reason, f"report of {len(batch)} blocks failed: {error}")

    def check_batch(self, batch: list[Block]) -> None:
        """Every block of a report must be isolated at its order (the device may
        discard it), each once: PolicyRuleError, with nothing sent, otherwise."""
        what = check_isolated(self.mm, batch)
        if what is not None:
            self.rule_errors.append(what)
            raise PolicyRuleError(what)


def check_isolated(mm: BuddyAllocator, batch: Sequence[Block]) -> str | None:
    """What is wrong with reporting ``batch``, or None: every block isolated at its
    order, none twice."""
    pg = mm.pg
    nr_pages = mm.nr_pages
    if len({pfn for pfn, _ in batch}) != len(batch):
        return "reported a block twice in one report; nothing sent"
    for pfn, order in batch:
        if not (0 <= pfn < nr_pages and pg[pfn] == ISOLATED | order):
            if not 0 <= pfn < nr_pages:
                state = "outside RAM"
            else:
                _, flag = containing_block(mm, pfn)
                state = {ISOLATED: "isolated at another order", FREE: "free"}.get(
                    flag & STATE_MASK, "allocated"
                )
            return (
                f"reported pfn {pfn:#x} order {order} without isolating it "
                f"(it is {state}); nothing sent"
            )
    return None


class NonePolicy(Policy):
    """No hinting: the baseline for comparisons."""

    name = "none"

    def start(self) -> None:
        self.mm.set_hook(None)

    async def stop(self) -> None:
        return None

    def idle(self) -> bool:
        return True
