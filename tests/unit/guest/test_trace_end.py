"""A replayed trace ends the run: --duration is an upper bound. The guest stays
after the trace only while its policy still has what the trace freed to report
(the reporting policy's delay), and says so."""

from __future__ import annotations

import time
from pathlib import Path

from guest.hinting.device import LoopbackDevice
from guest.mm import PAGE_SIZE, BuddyAllocator
from guest.runtime import GuestRuntime
from pagehint.config import GuestConfig, HintingConfig, MemoryConfig, TraceConfig
from pagehint.schema import GuestSummary
from tests.logs import log_lines

BLOCK = 1 << 21  # an order-9 block
BLOCKS = 64  # 128 MiB: above the watermark plus a report (32 blocks) the policy keeps


def free(t: float, pfn: int, order: int) -> str:
    page = "page=00000000deadbeef"
    return f"  a-1 [000] ..... {t:.6f}: mm_page_free: {page} pfn={pfn:#x} order={order}\n"


def short_trace(tmp: Path) -> Path:
    """Every page allocated before the trace (--trace-untouched allocated): the
    trace allocates nothing more and frees 64 order-9 blocks at its very end."""
    pfns = [0x2000 + i * 512 for i in range(BLOCKS)]
    lines = [free(1.0, pfn, 9) for pfn in pfns]
    path = tmp / "short.trace"
    path.write_text("".join(lines))
    return path


def config(trace: Path, duration: float | None, policy: str = "reporting") -> GuestConfig:
    return GuestConfig(
        ram_bytes=256 << 20,
        duration=duration,
        trace=TraceConfig(path=str(trace), speed=None, untouched="allocated"),
        hinting=HintingConfig(policy=policy, delay=0.5),
    )


def expected() -> int:
    """What the trace frees, less what the kernel's rules keep back: isolation stops
    at the zone's min watermark plus the block (__isolate_free_page; min_free_kbytes
    is raised for THP) and that list's cycle ends there; the per-CPU THP list holds
    up to its high mark."""
    zone = BuddyAllocator(256 << 20, model=MemoryConfig(layout="none")).zones[-1]
    kept = (zone.wmark_min + 1024 + zone.pcp.high) * PAGE_SIZE
    return BLOCKS * BLOCK - kept - 2 * BLOCK


async def run(cfg: GuestConfig) -> tuple[float, GuestSummary, list[str]]:
    lines = log_lines()
    rt = GuestRuntime(
        cfg,
        device=LoopbackDevice(),
    )
    t0 = time.monotonic()
    s = await rt.run()
    return time.monotonic() - t0, s, lines


async def test_duration_is_an_upper_bound_for_a_trace(tmp_path: Path) -> None:
    elapsed, s, lines = await run(config(short_trace(tmp_path), duration=30))
    assert elapsed < 10, f"ran {elapsed:.1f} s after a trace of a few ms"
    # It stayed for the reporting delay: what the trace freed was reported (all
    # but the few blocks the zone's watermark keeps back and those still on the
    # per-CPU THP list, below its high mark: the kernel's would hold them too).
    assert s["reported_bytes"] >= expected(), s["reported_bytes"]
    assert any("the trace ended" in line and "waiting" in line for line in lines), lines


async def test_without_duration_the_last_frees_are_still_reported(tmp_path: Path) -> None:
    elapsed, s, _ = await run(config(short_trace(tmp_path), duration=None))
    assert s["reported_bytes"] >= expected() and elapsed < 10


async def test_a_policy_with_nothing_pending_ends_with_the_trace(tmp_path: Path) -> None:
    # none has nothing to report: the guest ends as the trace does.
    elapsed, s, _ = await run(config(short_trace(tmp_path), duration=30, policy="none"))
    assert elapsed < 2 and s["reported_bytes"] == 0


async def test_the_duration_still_bounds_the_wait(tmp_path: Path) -> None:
    cfg = config(short_trace(tmp_path), duration=0.2)  # shorter than the 0.5 s delay
    elapsed, s, _ = await run(cfg)
    assert elapsed < 2 and s["reported_bytes"] == 0
