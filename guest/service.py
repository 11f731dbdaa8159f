"""Run a guest process: the runtime plus, with --host, the gRPC balloon driver."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

from guest.balloon import BalloonDriver
from guest.hinting.device import LoopbackDevice, ReportingDevice
from guest.ram import SharedRam
from guest.runtime import GuestRuntime
from pagehint import loop as event_loop
from pagehint.config import GuestConfig
from pagehint.logging import make_logger
from virtqueue.codec import Accepted


async def serve_guest(cfg: GuestConfig, quiet: bool = False) -> dict[str, Any]:
    log = make_logger(f"guest[{cfg.guest_id}]", quiet)
    if cfg.host is None:
        device: ReportingDevice = LoopbackDevice(capacity=cfg.hinting.effective_capacity())
        rt = GuestRuntime(cfg, device=device, log=log)
        _stop_on_signals(rt, log)
        metrics = _start_metrics(cfg, rt, None, log)
        log(
            f"started: {cfg.ram_bytes >> 20} MiB RAM, policy {cfg.hinting.policy}, "
            "no host (loopback)"
        )
        summary = await rt.run()
        if metrics is not None:
            metrics.shutdown()  # type: ignore[attr-defined]
        _write_ack_log(cfg, rt)
        summary["backend"] = "loopback"
        return summary

    from guest.runtime import build_allocator

    mm = build_allocator(cfg)
    driver = BalloonDriver(cfg, mm, log)
    ram: SharedRam | None = None

    def session(acc: Accepted) -> None:
        nonlocal ram
        if acc.backend != "shm":
            return
        if ram is None:
            ram = SharedRam(acc.shm_path, mm, cfg.guest_id, cfg.poison, log)
            log(f"mapped guest RAM from {acc.shm_path}")
        else:
            ram.move_to(acc.shm_path)
            log(f"moved guest RAM to {acc.shm_path}")

    driver.on_session.append(session)
    await driver.start()
    rt = GuestRuntime(cfg, device=driver, log=log, mm=mm)
    _stop_on_signals(rt, log)
    metrics = _start_metrics(cfg, rt, driver, log)
    if ram is not None:
        # Stamp after the allocator hands a block out; check before it takes it back.
        rt.memory.on_alloc.append(ram.on_alloc)
        rt.memory.on_free.append(ram.on_free)
    rt.memory.on_alloc.append(driver.on_alloc)
    rt.host_resident = lambda: driver.host_resident_bytes
    log(f"started: {cfg.ram_bytes >> 20} MiB RAM, policy {cfg.hinting.policy}, host {cfg.host}")
    try:
        summary = await rt.run(before_summary=driver.stop)
    finally:
        await driver.stop()
        if metrics is not None:
            metrics.shutdown()  # type: ignore[attr-defined]
    _write_ack_log(cfg, rt)
    assert driver.accepted is not None
    summary["backend"] = driver.accepted.backend
    summary["host_reported_bytes"] = (
        driver.host_figures.reported_bytes if driver.host_figures is not None else None
    )
    summary["host_resident_bytes"] = driver.host_resident_bytes
    summary["host_connects"] = driver.connects
    summary["touched_bytes_sent"] = driver.touched_pages_sent * 4096
    summary["host_poison_skipped_chains"] = (
        driver.host_figures.poison_skipped_chains if driver.host_figures is not None else None
    )
    summary["host_measured_by_kernel"] = bool(
        driver.host_figures is not None and driver.host_figures.measured_by_kernel
    )
    if ram is not None:
        # Blocks still held at the end are checked too: a loss is a loss.
        for b in mm.blocks():
            if b.state == "allocated":
                ram.check(b.pfn, b.order)
        summary["data_loss_pages"] = ram.data_loss_pages
        summary["poison_errors"] = ram.poison_errors
        summary["pages_checked"] = ram.pages_checked
        ram.close()
    summary["data_loss_checked"] = ram is not None
    log(
        f"done: reported {summary['reported_bytes'] >> 20} MiB in {summary['chains']} chains, "
        f"host holds {(driver.host_resident_bytes or 0) >> 20} MiB"
    )
    return summary


def _stop_on_signals(rt: GuestRuntime, log: Callable[[str], None]) -> None:
    """SIGTERM / SIGINT end the run cleanly: pages back, session closed, summary printed."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        log("stopping on signal")
        rt.ctx.stop.set()
        rt.stopped_by_signal = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


def _start_metrics(
    cfg: GuestConfig, rt: GuestRuntime, driver: BalloonDriver | None, log: Callable[[str], None]
) -> object | None:
    if cfg.metrics_port is None:
        return None
    from guest.metrics import guest_metrics
    from pagehint.metrics import serve

    server, port = serve(lambda: guest_metrics(rt, driver), cfg.metrics_port)
    log(f"metrics on http://0.0.0.0:{port}/metrics")
    return server


def _write_ack_log(cfg: GuestConfig, rt: GuestRuntime) -> None:
    if cfg.ack_log:
        with open(cfg.ack_log, "w", encoding="utf-8") as f:
            f.writelines(f"{x:.4f}\n" for x in rt.policy.stats.ack_log)


def run_guest(cfg: GuestConfig, quiet: bool = False) -> dict[str, Any]:
    return event_loop.run(serve_guest(cfg, quiet), cfg.loop)
