"""Run a guest process: the runtime, with the gRPC balloon driver when --host is given.

Without --host, reports go to the in-process loopback device; with it, they
go to `pagehint host`, and with that host's shm backend the guest's pages are
real memory, stamped and checked for loss.

A guest whose session the host's OOM killer ended (--host-memory, swap full)
stops its workload, writes its summary (``oom_killed: true``) and raises
OomKilled: one line, exit status 3 (pagehint/cli/guest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import signal
from collections.abc import Coroutine
from typing import IO, Any

from guest.balloon import BalloonDriver
from guest.balloon.connection import OomKilled
from guest.balloon.free_page_hint import HINT_BLOCK_ORDER
from guest.hinting.device import LoopbackDevice, ReportingDevice
from guest.mm.buddy import BuddyAllocator, boot_written_free
from guest.mm.constants import PAGE_SIZE
from guest.ram import RamFileRefused, SharedRam
from guest.runtime import GuestRuntime, HostFaults, add_host_faults, make_allocator
from pagehint import heap
from pagehint import loop as event_loop
from pagehint.config import GuestConfig
from pagehint.errors import UsageError
from pagehint.logging import log_as
from pagehint.schema import GuestSummary
from virtqueue.codec import Accepted

log = logging.getLogger(__name__)


async def serve_guest(cfg: GuestConfig, signals: StopSignals | None = None) -> GuestSummary:
    """Run one guest to its end; ``signals`` is shared by the guests of a group
    (a lone guest installs its own). Its lines say whose they are (log_as: this
    task and the ones it starts)."""
    if signals is None:
        signals = StopSignals()
        signals.install()
    log_as(f"guest[{cfg.guest_id}]", guest=cfg.guest_id)
    await signals.before_boot(cfg.start_delay)
    mm = make_allocator(cfg)
    shm = _RamFollower(cfg, mm)
    device, driver = await _device(cfg, mm, shm, signals)
    try:
        rt = GuestRuntime(cfg, device=device, mm=mm)
    except UsageError:  # e.g. the host's chains are too small for the policy
        if driver is not None:
            await driver.stop()
        raise
    _wire(rt, driver, shm.ram)
    reports = None
    if driver is not None and cfg.reports is not None:
        try:
            # Line-buffered: a killed guest leaves every finished line behind.
            reports = open(cfg.reports, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
        except OSError as e:
            await driver.stop()
            raise UsageError(f"--reports {cfg.reports}: cannot write: {e.strerror}") from None
        driver.view.report_log = reports
    signals.add(rt)
    try:
        metrics = _start_metrics(cfg, rt, driver)
    except UsageError:
        signals.remove(rt)
        if driver is not None:
            await driver.stop()  # close the session we opened: nothing left behind
        raise
    # Boot's state is built: out of the collector's full walks. After signals.add:
    # a stop from here on finds this guest running and gets its summary.
    heap.settle()
    where = "no host (loopback)" if cfg.host is None else f"host {cfg.host}"
    log.info(f"started: {cfg.ram_bytes >> 20} MiB RAM, policy {cfg.hinting.policy}, {where}")
    summary = await _run_then_close(rt, driver, signals, (metrics, reports), shm.ram)
    _finish(cfg, rt, driver, shm.ram, summary)
    if driver is not None and driver.fatal is not None:
        # Its id taken, a RAM file refused, or killed by the host's OOM killer (exit
        # 3, with the summary: pagehint/cli/guest.py), mid-run: a failure, in one line.
        raise _with_summary(driver.fatal, summary)
    log.info(
        f"done: reported {summary['reported_bytes'] >> 20} MiB in {summary['chains']} chains, "
        f"host holds {(summary['host_resident_bytes'] or 0) >> 20} MiB"
    )
    return summary


async def _device(
    cfg: GuestConfig, mm: BuddyAllocator, shm: _RamFollower, signals: StopSignals
) -> tuple[ReportingDevice, BalloonDriver | None]:
    """The reporting device: the balloon driver, connected, with --host; else a
    loopback device in the process."""
    if cfg.host is None:
        return LoopbackDevice(capacity=cfg.hinting.effective_capacity()), None
    driver = BalloonDriver(cfg, mm)
    shm.driver = driver
    driver.on_session.append(shm)
    try:
        await signals.unless_stopped(driver.start())
    except UsageError:
        await driver.stop()  # a session it may have opened is closed
        raise
    return driver, driver


def _with_summary(e: UsageError, summary: GuestSummary) -> UsageError:
    if isinstance(e, OomKilled):
        e.summary = summary
    return e


class _RamFollower:
    """The guest's real RAM (shm backend), following the host's sessions: mapped at
    the first one, moved to the new file when a later session names one."""

    def __init__(self, cfg: GuestConfig, mm: BuddyAllocator) -> None:
        self.cfg, self.mm = cfg, mm
        self.ram: SharedRam | None = None
        self.driver: BalloonDriver | None = None

    def __call__(self, acc: Accepted) -> None:
        if acc.backend != "shm":
            return
        try:
            if self.ram is None:
                self.ram = SharedRam(
                    acc.shm_path,
                    self.mm,
                    self.cfg.guest_id,
                    self.cfg.poison,
                    folder=self.cfg.shm_dir,
                )
                log.info(f"mapped guest RAM from {acc.shm_path}")
            else:
                self.ram.move_to(acc.shm_path)
                log.info(f"moved guest RAM to {acc.shm_path}")
            self._gate(self.ram, acc)
        except RamFileRefused as e:
            # A host that names such a file is broken or hostile: the connection
            # closes the session and the guest stops (no retrying the same host).
            raise RamFileRefused(f"host {self.cfg.host} {e}") from None

    def _gate(self, ram: SharedRam, acc: Accepted) -> None:
        """With the host's memory model, the RAM's accesses wait for their touches
        (guest/ram.py); without it nothing is swapped and nothing waits."""
        driver = self.driver
        if driver is None:
            return
        ram.follow(driver.link, gated=acc.host_memory)
        driver.migration.ram = ram  # a snapshot's image is checked against it


async def _before_summary(driver: BalloonDriver, ram: SharedRam | None) -> None:
    """Before the driver stops: with a gate, bring back every allocated frame the
    host swapped out (bounded), so the final check reads the guest's own pages."""
    # Only from a host still there: with none (it died, the guest reconnects) the
    # wait could only run out, and a stopping guest must not hang on it.
    if (
        ram is not None
        and ram.gate is not None
        and driver.conn.fatal is None
        and driver.conn.connected.is_set()
    ):
        ticket = ram.fault_in_all(driver.mm)
        if ticket:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(driver.link.settled(ticket), FAULT_IN_SECONDS)
    await driver.stop()


# How long a stopping guest waits for the host to bring its swapped frames back
# for the final page check (a swap-in of a whole 1 GiB guest at 85 us a page is 22 s:
# past this the check is skipped and says so, guest/ram.py check_all).
FAULT_IN_SECONDS = 30.0


async def _run_then_close(
    rt: GuestRuntime,
    driver: BalloonDriver | None,
    signals: StopSignals,
    closers: tuple[object, IO[str] | None],
    ram: SharedRam | None = None,
) -> GuestSummary:
    """Run the guest; then, however it ended, close the driver, metrics and report log."""
    metrics, reports = closers
    connected = driver
    try:
        return await rt.run(
            before_summary=None if connected is None else lambda: _before_summary(connected, ram)
        )
    finally:
        signals.remove(rt)
        if driver is not None:
            await driver.stop()
        if metrics is not None:
            metrics.shutdown()  # type: ignore[attr-defined]
        if reports is not None:
            with contextlib.suppress(OSError):
                reports.close()


def _wire(rt: GuestRuntime, driver: BalloonDriver | None, ram: SharedRam | None) -> None:
    """Connect the runtime to the driver and the real RAM: listeners, host figures."""
    if ram is not None:
        # Stamp after the allocator hands a block out; check before it takes it back.
        rt.memory.on_alloc.append(ram.on_alloc)
        rt.memory.on_free.append(ram.on_free)
    if driver is not None:
        connected = driver
        # The driver cannot go on (guest id taken, RAM file refused): end the run.
        connected.conn.on_fatal.append(lambda _e: rt.ctx.stop.set())
        rt.memory.on_alloc.append(connected.link.on_alloc)
        rt.memory.on_oom.append(connected.on_oom)
        # Snapshots: writes go into the dirty log; the host's pause stops the workload.
        rt.memory.on_alloc.append(connected.migration.on_write)
        rt.memory.on_free.append(connected.migration.on_write)
        connected.migration.on_pause.append(rt.ctx.set_paused)
        # The host's memory model: its Notices' delays are the workload's to wait.
        connected.link.on_fault_delay.append(rt.ctx.add_fault_debt)
        connected.conn.on_fatal.append(
            lambda e: setattr(rt, "oom_killed", rt.oom_killed or isinstance(e, OomKilled))
        )
        connected.view.epoch = rt.started
        connected.on_chain_written = rt.policy.kernel_work.written
        rt.host = DriverReadings(connected, ram)
    # What the guest's kernel allocated before any listener was there (the boot
    # layout: reserved ranges, boot's slab and tables): written, as a booted
    # guest's are, so the host holds them and the page checker knows them.
    for block in rt.mm.blocks() if rt.memory.on_alloc else ():
        if block.state == "allocated":
            for listener in rt.memory.on_alloc:
                listener(block.pfn, block.order)
    # What the boot wrote and then freed (its decompression buffer and copies of
    # the kernel): free in the buddy, and held by the host all the same.
    # (Free: the RAM file's page checks get no allocation's contents to hold it to.)
    for pfn, order in boot_written_free(rt.mm) if rt.memory.on_alloc else ():
        for listener in rt.memory.on_alloc:
            if ram is None or listener != ram.on_alloc:
                listener(pfn, order)
        if ram is not None:
            ram.write_free(pfn, order)


class DriverReadings:
    """The runtime's readings of a host reached through a driver (HostReadings).

    sim: an ack row holds the host's answer to that very chain (a stats poll in
    between would mix in later touches). shm: the kernel's count of the RAM file,
    read at the moment a row describes, not the host's last answer or a stats
    poll (which lag by up to 0.25 s)."""

    def __init__(self, driver: BalloonDriver, ram: SharedRam | None) -> None:
        self.driver = driver
        self.ram = ram
        self.ack_from_answer = ram is None

    def resident_bytes(self) -> int | None:
        if self.ram is not None:
            return self.ram.resident_bytes()
        return self.driver.view.host_resident_bytes

    def last_chain(self) -> int | None:
        return self.driver.view.last_done

    def answered_resident(self) -> int | None:
        return self.driver.view.last_done_resident

    def faults(self) -> HostFaults | None:
        return _host_faults(self.driver)

    def balloon(self) -> tuple[int, int] | None:
        b = self.driver.balloon
        return (b.target * PAGE_SIZE, b.actual * PAGE_SIZE) if b.negotiated else None


def _host_faults(driver: BalloonDriver) -> HostFaults | None:
    """The fault figures once any session had the host's memory model (else None)."""
    if not driver.link.host_memory_seen:
        return None
    fig = driver.view.host_figures
    return HostFaults(
        driver.link.major_faults,
        driver.link.minor_faults,
        fig.swapped_bytes if fig is not None else None,
    )


def _finish(
    cfg: GuestConfig,
    rt: GuestRuntime,
    driver: BalloonDriver | None,
    ram: SharedRam | None,
    summary: GuestSummary,
) -> None:
    """After the run: the ack log, the host's figures, the final check of real RAM."""
    if cfg.ack_log:
        try:
            with open(cfg.ack_log, "w", encoding="utf-8") as f:
                f.writelines(f"{x:.4f}\n" for x in rt.policy.stats.ack_latency_ms)
        except OSError as e:
            # The run's results matter more than the log: say so, keep the summary.
            log.info(f"--ack-log {cfg.ack_log}: cannot write: {e.strerror}")
            summary["ack_log_error"] = e.strerror
    summary["backend"] = "loopback" if driver is None else _host_figures(driver, summary)
    add_host_faults(rt, summary)
    if ram is not None:
        if rt.oom_killed:
            # The host took the guest's memory with its session: nothing is left
            # of the guest's to check (a killed VM's RAM is gone too).
            log.info("final page check skipped: the host's OOM killer took the guest's memory")
        else:
            ram.check_all(rt.mm)
        summary["data_loss_pages"] = ram.data_loss_pages
        summary["poison_errors"] = ram.poison_errors
        summary["pages_checked"] = ram.pages_checked
        summary["final_check_skipped"] = ram.final_check_skipped
        summary["data_loss_checked"] = True
        ram.close()


def _host_figures(driver: BalloonDriver, summary: GuestSummary) -> str:
    """Add what the host said about this guest to the summary; returns its backend.

    ``host_reported_bytes`` is the host's count for this guest id since the host
    process started, across sessions; ``reported_bytes_this_host`` is the
    guest's count of what that same host process acknowledged. The two agree
    (a test holds them to it); they differ from the guest's ``reported_bytes``
    only when the host restarted during the run.
    """
    fig = driver.view.host_figures
    summary["host_reported_bytes"] = fig.reported_bytes if fig is not None else None
    summary["host_chains"] = fig.chains if fig is not None else None
    summary["host_refused_chains"] = fig.refused_chains if fig is not None else None
    summary["host_failed_chains"] = fig.failed_chains if fig is not None else None
    summary["host_poison_skipped_chains"] = fig.poison_skipped_chains if fig is not None else None
    summary["host_measured_by_kernel"] = bool(fig is not None and fig.measured_by_kernel)
    summary["reported_bytes_this_host"] = driver.view.acked_pages_this_host * PAGE_SIZE
    summary["host_connects"] = driver.connects
    summary["fences"] = driver.conn.fences
    summary["fenced_done_chains"] = driver.window.stats.fenced_done
    summary["fenced_cancelled_chains"] = driver.window.stats.fenced_not_done
    summary["stalled_reports"] = driver.view.stalls
    summary["touched_bytes_sent"] = driver.link.touches.pages_sent * PAGE_SIZE
    b = driver.balloon
    summary["balloon_target_bytes"] = b.target * PAGE_SIZE
    summary["balloon_inflated_bytes"] = b.inflated_pages * PAGE_SIZE
    summary["balloon_oom_deflated_bytes"] = b.oom_deflated_pages * PAGE_SIZE
    summary["balloon_oom_deflations"] = b.oom_deflations
    summary["balloon_inflate_shortfalls"] = b.inflate_failures
    summary["balloon_alloc_stalls"] = b.alloc_stalls
    h = driver.hints
    summary["free_page_hint_runs"] = h.runs
    summary["snapshots"] = driver.migration.snapshots
    summary["free_page_hinted_bytes"] = (h.hinted_blocks << HINT_BLOCK_ORDER) * PAGE_SIZE
    summary["free_page_hint_shrunk_bytes"] = (h.shrunk_blocks << HINT_BLOCK_ORDER) * PAGE_SIZE
    assert driver.accepted is not None
    return driver.accepted.backend


class StopSignals:
    """SIGTERM / SIGINT for every guest of this process (several with
    `pagehint guest-group`), installed before any of them boots.

    A guest that is running ends cleanly (pages back, session closed, summary
    printed); one still waiting for its --start-delay or still connecting does
    not start at all. loop.add_signal_handler keeps one handler per signal, so
    one object serves them all.
    """

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.running: list[GuestRuntime] = []
        # Each guest's context (log_as: whose lines): a signal's handler runs in the
        # context it was installed from, and would log without the guest's id.
        self._contexts: dict[int, contextvars.Context] = {}

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)

    def stop(self) -> None:
        self.requested.set()
        for rt in self.running:
            self._contexts[id(rt)].run(log.info, "stopping on signal")
            self.stop_one(rt)

    @staticmethod
    def stop_one(rt: GuestRuntime) -> None:
        rt.ctx.stop.set()
        rt.stopped_by_signal = True

    def add(self, rt: GuestRuntime) -> None:
        """Called from the guest's own task (its context names it)."""
        self.running.append(rt)
        self._contexts[id(rt)] = contextvars.copy_context()
        if self.requested.is_set():
            self.stop_one(rt)

    def remove(self, rt: GuestRuntime) -> None:
        self.running = [r for r in self.running if r is not rt]
        self._contexts.pop(id(rt), None)

    async def before_boot(self, seconds: float) -> None:
        """Wait ``seconds`` (a start delay) unless a signal comes first."""
        if seconds:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.requested.wait(), seconds)
        if self.requested.is_set():
            raise UsageError("stopped by a signal before it started")

    async def unless_stopped(self, start: Coroutine[Any, Any, None]) -> None:
        """Run ``start`` (connecting to the host) unless a signal comes first."""
        task = asyncio.ensure_future(start)
        stop = asyncio.ensure_future(self.requested.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()  # this guest itself was cancelled: so is its connecting
            raise
        finally:
            stop.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise UsageError("stopped by a signal while connecting to the host")
        task.result()


def _start_metrics(
    cfg: GuestConfig, rt: GuestRuntime, driver: BalloonDriver | None
) -> object | None:
    if cfg.metrics_port is None:
        return None
    from guest.metrics import guest_metrics
    from pagehint.metrics import serve

    server, port = serve(lambda: guest_metrics(rt, driver), cfg.metrics_port, cfg.metrics_addr)
    log.info(f"metrics on http://{cfg.metrics_addr}:{port}/metrics")
    return server


def run_guest(cfg: GuestConfig) -> GuestSummary:
    with heap.settling():
        return event_loop.run(serve_guest(cfg), cfg.loop)
