"""Run a guest process: the runtime plus, with --host, the gRPC balloon driver."""

from __future__ import annotations

from typing import Any

from guest.hinting.device import LoopbackDevice
from guest.runtime import GuestRuntime
from pagehint import loop as event_loop
from pagehint.config import GuestConfig
from pagehint.logging import make_logger


async def serve_guest(cfg: GuestConfig, quiet: bool = False) -> dict[str, Any]:
    log = make_logger(f"guest[{cfg.guest_id}]", quiet)
    capacity = cfg.hinting.effective_capacity()
    device = LoopbackDevice(capacity=capacity)
    rt = GuestRuntime(cfg, device=device, log=log)
    log(
        f"started: {cfg.ram_bytes >> 20} MiB RAM, policy {cfg.hinting.policy}, "
        "in-process loopback host"
    )
    summary = await rt.run()
    summary["backend"] = "loopback"
    log(f"done: reported {summary['reported_bytes'] >> 20} MiB in {summary['chains']} chains")
    return summary


def run_guest(cfg: GuestConfig, quiet: bool = False) -> dict[str, Any]:
    return event_loop.run(serve_guest(cfg, quiet), cfg.loop)
