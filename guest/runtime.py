"""One guest: its allocator, workload, hinting policy and (optionally) its driver.

The runtime owns the pieces and their lifetimes; it samples the timeline and
builds the end-of-run summary. Everything else is in the pieces.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, NamedTuple, Protocol

from guest.hinting.base import Policy
from guest.hinting.device import ReportingDevice
from guest.hinting.registry import make_policy
from guest.memory import GuestMemory
from guest.mm.buddy import BuddyAllocator
from guest.mm.check import InvariantError, check_invariants
from guest.mm.constants import PAGE_SIZE
from guest.mm.layout import KERNEL_START_PFN
from guest.trace.load import load_plan
from guest.trace.replay import ReplayPlan, ReplayStats, fill_warning, prepare, replay
from guest.trace.replay import summary as replay_summary
from guest.workloads.base import WorkloadContext
from guest.workloads.boot import boot
from guest.workloads.builtin import WorkloadParams, run_builtin
from guest.workloads.scenario import Scenario, load_scenario, run_scenario
from pagehint.config import GuestConfig
from pagehint.errors import UsageError
from pagehint.schema import Event, GuestSummary, TimelineRow, encode
from pagehint.stats import percentiles

log = logging.getLogger(__name__)

TIMELINE_PERIOD = 0.1  # seconds between periodic timeline rows (besides event rows)
# Acknowledgement rows: at most one per this many seconds (100/s). Acks closer
# together are written as one row when the interval ends, so a timeline stays
# bounded (≤ 10 + 100 rows/s, ~170 bytes each) however fast chains go.
ACK_ROW_INTERVAL = 0.01
# After a trace, the guest stays while its policy has work pending (what the
# trace freed, waiting for the reporting delay), polling this often, and without
# --duration for at most this long.
SETTLE_POLL = 0.05
SETTLE_LIMIT = 60.0


class HostFaults(NamedTuple):
    """What the host's memory model said of this guest so far (host_memory)."""

    major_faults: int
    minor_faults: int
    swapped_bytes: int | None  # the host's last figure (None: not heard yet)


class HostReadings(Protocol):
    """What a run reads of its host: the service gives one per run (a driver's view
    and, on shm, the RAM file's own count); ``NoHost`` without a host."""

    # Acknowledgement rows hold the host's answer to that chain (sim) rather than
    # resident_bytes() (shm: the kernel's count, exact at the row's moment).
    ack_from_answer: bool

    def resident_bytes(self) -> int | None:
        """What the host holds for this guest now (None: not known)."""

    def last_chain(self) -> int | None:
        """The last chain the host answered DONE."""

    def answered_resident(self) -> int | None:
        """The host's figure in its answer to that chain."""

    def faults(self) -> HostFaults | None:
        """The host's memory model's figures (None: the host has none)."""

    def balloon(self) -> tuple[int, int] | None:
        """The balloon's (target, actual) in bytes (None: no balloon negotiated)."""


class NoHost:
    """The in-process loopback device: there is no host to read."""

    ack_from_answer = False

    def resident_bytes(self) -> int | None:
        return None

    def last_chain(self) -> int | None:
        return None

    def answered_resident(self) -> int | None:
        return None

    def faults(self) -> HostFaults | None:
        return None

    def balloon(self) -> tuple[int, int] | None:
        return None


def make_allocator(cfg: GuestConfig) -> BuddyAllocator:
    """The guest's allocator, with the kernel rules its config names. A trace
    brings its own machine's layout (its pfns are that machine's, and the pages
    it never names are --trace-untouched's), so a replay lays out nothing."""
    model = cfg.memory
    if cfg.trace is not None and model.layout != "none":
        # nor loads a kernel anywhere (--kernel-at is the layout's, as is the rest)
        model = dataclasses.replace(model, layout="none", kernel_at=KERNEL_START_PFN * PAGE_SIZE)
    try:
        return BuddyAllocator(cfg.ram_bytes, model=model)
    except ValueError as e:  # a layout that does not fit this RAM
        raise UsageError(f"--boot-layout {cfg.memory.layout}: {e}") from None


def _warn_of_low_fill(plan: ReplayPlan, untouched: str) -> None:
    """A trace that fills little of its blocks, replayed with the rest free."""
    if untouched != "allocated" and (warning := fill_warning(plan.block_fill)):
        log.warning(warning)


class GuestRuntime:
    def __init__(
        self,
        cfg: GuestConfig,
        device: ReportingDevice | None = None,
        scenario: Scenario | None = None,
        mm: BuddyAllocator | None = None,
    ) -> None:
        self.cfg = cfg
        self.mm = mm if mm is not None else make_allocator(cfg)
        self.memory = GuestMemory(self.mm)
        if scenario is None and cfg.scenario is not None:
            scenario = load_scenario(cfg.scenario)
        self.scenario = scenario
        self._out: IO[str] | None = None
        self.policy: Policy = make_policy(cfg.hinting, self.mm, device)
        self.ctx = WorkloadContext(
            self.memory, seed=cfg.seed, on_mark=self._on_mark, kernel=self.policy.kernel_work
        )
        self.started = time.monotonic()
        # What the run reads of its host (the service gives one: guest/service.py).
        self.host: HostReadings = NoHost()
        self.stopped_by_signal = False
        self.oom_killed = False  # the host's OOM killer ended us
        self._last_ack_row = 0.0
        self.timeline_error: str | None = None
        self._ack_row_pending = False
        self.policy.on_ack.append(self._on_ack)
        self.replay_plan: ReplayPlan | None = None
        self.replay_stats = ReplayStats()
        self.replay_speed = cfg.trace.speed if cfg.trace is not None else None
        self.replay_untouched = cfg.trace.untouched if cfg.trace is not None else "reported"
        if cfg.trace is not None:
            self.replay_plan = load_plan(cfg.trace)
            _warn_of_low_fill(self.replay_plan, self.replay_untouched)

    def _on_mark(self, label: str) -> None:
        # A row of its own, at once: marks closer than a sampling period all show.
        self._emit(self.sample(mark=label, event="mark"))
        log.info(f"mark {label} at {self.ctx.now():.2f}s")

    def _on_ack(self) -> None:
        # A row at every acknowledgement, with the host's figure right after it:
        # drops show where the chains were acknowledged, not at the next sample.
        if self._out is None or self._ack_row_pending:
            return
        wait = self._last_ack_row + ACK_ROW_INTERVAL - time.monotonic()
        if wait > 0:
            self._ack_row_pending = True
            # +1 ms: uvloop's timers count whole milliseconds from a clock read at
            # the start of each loop turn, so they may fire up to 1 ms early.
            asyncio.get_running_loop().call_later(wait + 0.001, self._ack_row)
        else:
            self._ack_row()

    def _ack_row(self) -> None:
        self._ack_row_pending = False
        row = self.sample(event="ack")
        # After the row's own clock reading: the next ack row's time is then at
        # least ACK_ROW_INTERVAL after this one's, however long sampling took.
        self._last_ack_row = time.monotonic()
        chain = self.host.last_chain()
        if chain is not None:
            row["chain"] = chain
        if self.host.ack_from_answer:
            row["host_resident_bytes"] = self.host.answered_resident()
        self._emit(row)

    def _emit(self, row: TimelineRow) -> None:
        if self._out is None:
            return
        try:
            self._out.write(encode(row) + "\n")
            self._out.flush()
        except OSError as e:
            # The run matters more than its timeline: say so once, stop writing.
            log.info(f"--timeline: cannot write ({e.strerror}); no more timeline rows")
            self.timeline_error = e.strerror or str(e)
            out, self._out = self._out, None
            with contextlib.suppress(OSError):
                out.close()

    def sample(self, mark: str | None = None, event: Event = "sample") -> TimelineRow:
        """One timeline row: ``event`` is "sample" (periodic), "mark", "ack" or "end"."""
        st = self.policy.stats
        row: TimelineRow = {
            "t": round(time.monotonic() - self.started, 4),
            "event": event,
            "free_bytes": (self.mm.nr_free_pages + self.mm.nr_pcp_pages) * PAGE_SIZE,
            "isolated_bytes": self.mm.isolated_bytes,
            "allocated_bytes": self.mm.allocated_pages * PAGE_SIZE,
            "pcp_bytes": self.mm.nr_pcp_pages * PAGE_SIZE,
            "reported_bytes": st.reported_bytes,
            "host_resident_bytes": self.host.resident_bytes(),
        }
        if mark is not None:
            row["mark"] = mark
        balloon = self.host.balloon()
        if balloon is not None:
            row["balloon_target_bytes"], row["balloon_bytes"] = balloon
        faults = self.host.faults()
        if faults is not None:
            row["major_faults"] = faults.major_faults
            row["minor_faults"] = faults.minor_faults
            row["fault_wait_seconds"] = round(self.ctx.fault_wait_seconds, 6)
            row["swapped_bytes"] = faults.swapped_bytes
            if event == "end":
                row["oom_killed"] = self.oom_killed
        return row

    async def _sample_loop(self) -> None:
        while True:
            self._emit(self.sample())
            await asyncio.sleep(TIMELINE_PERIOD)

    async def _workload(self) -> None:
        # The balloon registered just now (policy.start): a scenario's `until`
        # counts from here, whatever a boot footprint takes first.
        registered = self.ctx.now()
        # A boot footprint (off unless --boot-footprint) is held from here to the end.
        await boot(self.ctx, self.cfg.boot, self.cfg.seed)
        if self.replay_plan is not None:
            prepare(self.replay_plan, self.ctx, self.replay_stats, self.replay_untouched)
            self.ctx.mark("trace-start")
            await replay(self.replay_plan, self.ctx, self.replay_speed, self.replay_stats)
            self.ctx.mark("trace-end")
        elif self.scenario is not None:
            await run_scenario(self.scenario, self.ctx, began=registered)
        elif self.cfg.workload is not None:
            await run_builtin(
                self.cfg.workload, self.ctx, WorkloadParams(ops_per_second=self.cfg.rate)
            )

    async def run(
        self, before_summary: Callable[[], Awaitable[None]] | None = None
    ) -> GuestSummary:
        """Run the workload for the configured duration; returns the summary.

        ``before_summary`` runs after the policy stopped and before the last sample
        (the driver uses it to fetch the host's final figures).
        """
        if self.cfg.timeline:
            # Closed in the finally below, after the last sample. The CLI checked
            # the folder; a dangling link or /proc shows only when opened.
            try:
                self._out = Path(self.cfg.timeline).open("w", encoding="utf-8")  # noqa: SIM115
            except OSError as e:
                raise UsageError(
                    f"--timeline {self.cfg.timeline}: cannot write: {e.strerror or e}"
                ) from None
        sampler = asyncio.create_task(self._sample_loop())
        self.policy.start()
        work = asyncio.create_task(self._workload())
        try:
            stop = asyncio.ensure_future(self.ctx.stop.wait())
            done, _ = await asyncio.wait(
                {work, stop}, timeout=self.cfg.duration, return_when=asyncio.FIRST_COMPLETED
            )
            if work in done:
                await self._after_workload()
            self.ctx.stop.set()
            stop.cancel()
            await work
        finally:
            self.ctx.stop.set()
            if not work.done():
                work.cancel()
            await self.policy.stop()
            self.policy.problems.flush(force=True)
            if before_summary is not None:
                await before_summary()
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            self._emit(self.sample(event="end"))
            if self._out is not None:
                with contextlib.suppress(OSError):
                    self._out.close()
                self._out = None
        return self.summary()

    async def _after_workload(self) -> None:
        """The workload ended before --duration. A scenario or a built-in workload
        idles until the duration, so hinting can finish. A trace ends the run (its
        --duration is an upper bound): the guest stays only while its policy still
        has work pending — the trace's last frees, waiting for the reporting delay."""
        left = None
        if self.cfg.duration is not None:
            left = self.cfg.duration - (time.monotonic() - self.started)
        if self.replay_plan is None:
            if left is not None:
                await self.ctx.sleep(left)
            return
        limit = SETTLE_LIMIT if left is None else left
        if self.policy.idle() or self.ctx.stop.is_set() or limit <= 0:
            return
        log.info(
            f"the trace ended at {self.ctx.now():.2f}s; waiting (at most {limit:.1f}s) "
            f"for policy {self.cfg.hinting.policy} to report what it freed"
        )
        deadline = time.monotonic() + limit
        while not self.policy.idle() and time.monotonic() < deadline:
            if not await self.ctx.sleep(min(SETTLE_POLL, deadline - time.monotonic())):
                return
        waited = "idle" if self.policy.idle() else "still busy: stopping it"
        log.info(f"policy {self.cfg.hinting.policy} {waited} at {self.ctx.now():.2f}s")

    def summary(self) -> GuestSummary:
        st = self.policy.stats
        lat = [x / 1e6 for x in self.memory.alloc_latency_ns]
        return {
            "guest_id": self.cfg.guest_id,
            "policy": self.cfg.hinting.policy,
            "ram_bytes": self.cfg.ram_bytes,
            "duration_s": round(time.monotonic() - self.started, 3),
            "reported_bytes": st.reported_bytes,
            "reported_blocks": st.reported_blocks,
            "chains": st.reports,
            "report_failures": st.failures,
            "report_failures_by_reason": dict(st.failures_by_reason),
            "isolation_refused": st.isolation_refused,
            "abandoned_reports": st.abandoned_reports,
            "abandoned_bytes": st.abandoned_pages * PAGE_SIZE,
            "stale_bits": st.stale,
            "walks": st.walks,
            "isolated_peak_bytes": st.isolated_peak_pages * PAGE_SIZE,
            "worker_seconds": round(st.worker_seconds, 4),
            "free_bytes": (self.mm.nr_free_pages + self.mm.nr_pcp_pages) * PAGE_SIZE,
            # The policy's order: a host's --min-order may have raised the flag's.
            "reportable_free_bytes": self.mm.free_pages_at_or_above(self.policy.order) * PAGE_SIZE,
            "host_resident_bytes": self.host.resident_bytes(),
            "ack_latency_ms": percentiles(st.ack_latency_ms),
            "alloc_ops": self.ctx.stats.alloc_ops,
            "alloc_failures": self.ctx.stats.alloc_failures,
            "alloc_latency_ms": percentiles(lat),
            "data_loss_pages": 0,
            # Only real guest RAM (the shm backend) can show a loss; the service sets these.
            "data_loss_checked": False,
            "stopped_by_signal": self.stopped_by_signal,
            "isolated_bytes": self.mm.isolated_bytes,
            "allocated_bytes": self.mm.allocated_pages * PAGE_SIZE,
            "invariants": _invariants(self.mm) if self.cfg.check else None,
            "marks": [{"t": round(t, 3), "label": label} for t, label in self.ctx.stats.marks],
            "timeline_error": self.timeline_error,
            # Contract breaks of the policy (docs/policies.md): each one fails the run.
            "policy_errors": list(self.policy.rule_errors),
            "trace": None
            if self.replay_plan is None
            else replay_summary(self.replay_plan, self.replay_stats, self.replay_speed),
        }


def _invariants(mm: BuddyAllocator) -> str:
    """--check: the allocator's invariants at the end ("ok", or what broke)."""
    try:
        check_invariants(mm)
    except InvariantError as e:
        return f"broken: {e}"
    return "ok"


def add_host_faults(rt: GuestRuntime, summary: GuestSummary) -> None:
    """The host's memory model's figures in a summary (0 / None / false with a host
    without one, or none)."""
    faults = rt.host.faults() or HostFaults(0, 0, None)
    summary["major_faults"] = faults.major_faults
    summary["minor_faults"] = faults.minor_faults
    summary["fault_wait_seconds"] = round(rt.ctx.fault_wait_seconds, 6)
    summary["swapped_bytes"] = faults.swapped_bytes
    summary["oom_killed"] = rt.oom_killed
