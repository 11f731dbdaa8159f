"""GuestRuntime: the run's lifetime, its timeline rows, and a timeline that cannot
be written (the run goes on)."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from guest.hinting.device import LoopbackDevice
from guest.mm import PAGE_SIZE
from guest.runtime import ACK_ROW_INTERVAL, GuestRuntime
from guest.workloads.scenario import parse_scenario
from pagehint.config import GuestConfig, HintingConfig, MemoryConfig
from pagehint.errors import UsageError
from pagehint.schema import TimelineRow, read_lines
from tests.logs import log_lines
from tests.waiting import wait_for

ALLOC_FREE = (
    '[[steps]]\nop = "alloc"\nsize = "32MiB"\nname = "a"\n'
    '[[steps]]\nop = "mark"\nlabel = "free"\n'
    '[[steps]]\nop = "free"\nname = "a"\n'
)


def _cfg(tmp: Path | None, duration: float = 1.0, **kw: object) -> GuestConfig:
    return GuestConfig(
        ram_bytes=128 << 20,
        duration=duration,
        timeline=None if tmp is None else str(tmp),
        hinting=HintingConfig(policy="reporting", delay=0.0),
        # No boot layout: a 128 MiB Linux guest's zone never passes reporting's gate
        # (free > low + 32 x 2 MiB), and these tests are about the timeline.
        memory=MemoryConfig(layout="none"),
        **kw,  # type: ignore[arg-type]
    )


async def test_acks_get_rows_of_their_own_at_a_bounded_rate(tmp_path: Path) -> None:
    tl = tmp_path / "t.jsonl"
    rt = GuestRuntime(
        _cfg(tl), device=LoopbackDevice(delay=0.001), scenario=parse_scenario(ALLOC_FREE)
    )
    s = await rt.run()
    assert s["reported_bytes"] > 0
    rows = read_lines(TimelineRow, tl)
    acks = [r for r in rows if r["event"] == "ack"]
    assert acks, [r["event"] for r in rows]
    # At most one ack row per ACK_ROW_INTERVAL (times are rounded to 0.1 ms).
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(acks)]
    assert all(g >= ACK_ROW_INTERVAL - 2e-4 for g in gaps), gaps
    assert rows[-1]["event"] == "end" and rows[-1]["reported_bytes"] == s["reported_bytes"]
    marks = [r for r in rows if r["event"] == "mark"]
    assert [m.get("mark") for m in marks] == ["free"]


async def test_rows_say_what_of_the_free_memory_waits_on_the_per_cpu_lists(
    tmp_path: Path,
) -> None:
    tl = tmp_path / "t.jsonl"
    rt = GuestRuntime(_cfg(tl), scenario=parse_scenario(ALLOC_FREE))
    await rt.run()
    rows = read_lines(TimelineRow, tl)
    assert all(0 <= r["pcp_bytes"] <= r["free_bytes"] for r in rows)
    # The 32 MiB free left pages on the list (THP-sized and order-0 frees go there).
    assert rows[-1]["pcp_bytes"] == rt.mm.nr_pcp_pages * PAGE_SIZE > 0


async def test_an_early_workload_idles_until_the_duration() -> None:
    t0 = time.monotonic()
    s = await GuestRuntime(_cfg(None, duration=0.6), scenario=parse_scenario(ALLOC_FREE)).run()
    assert time.monotonic() - t0 >= 0.55
    assert s["duration_s"] >= 0.55 and not s["stopped_by_signal"]


async def test_stop_ends_the_run_before_its_duration() -> None:
    rt = GuestRuntime(_cfg(None, duration=60), scenario=parse_scenario(ALLOC_FREE))
    run = asyncio.create_task(rt.run())
    await wait_for(lambda: rt.ctx.stats.alloc_ops > 0, 10, "the workload to run")
    rt.ctx.stop.set()
    s = await asyncio.wait_for(run, 10)
    assert s["duration_s"] < 30


async def test_a_timeline_that_cannot_be_written_does_not_stop_the_run() -> None:
    lines = log_lines()
    rt = GuestRuntime(
        _cfg(Path("/dev/full"), duration=0.3),
        scenario=parse_scenario(ALLOC_FREE),
    )
    s = await rt.run()
    assert s["timeline_error"] == "No space left on device"
    assert s["invariants"] is None and s["reported_bytes"] >= 0
    assert sum("--timeline: cannot write" in line for line in lines) == 1


async def test_a_timeline_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "no" / "such" / "file")
    rt = GuestRuntime(_cfg(link), scenario=parse_scenario(ALLOC_FREE))
    with pytest.raises(UsageError, match=r"^--timeline .*dangling: cannot write: No such file"):
        await rt.run()


async def test_until_counts_from_registration_not_after_the_boot_footprint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A boot footprint takes its time before the scenario's first step; `until`
    # keeps the schedule from the balloon's registration all the same.
    import guest.runtime

    async def slow_boot(*args: object) -> int:
        await asyncio.sleep(0.4)
        return 0

    monkeypatch.setattr(guest.runtime, "boot", slow_boot)
    until = '[[steps]]\nop = "sleep"\nuntil = 0.6\n[[steps]]\nop = "mark"\nlabel = "at"\n'
    rt = GuestRuntime(_cfg(None, duration=1.5), scenario=parse_scenario(until))
    await rt.run()
    (at,) = [t for t, label in rt.ctx.stats.marks if label == "at"]
    assert 0.55 <= at < 0.8, at


async def test_the_workload_yields_to_its_policys_work_at_each_operation() -> None:
    """guest/sched.py: while the policy's worker is under way, each of the
    workload's operations lets the loop run (a woken kworker preempts it)."""
    rt = GuestRuntime(_cfg(None), device=LoopbackDevice())
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    with rt.policy.kernel_work.running():
        before = turns
        for _ in range(10):
            await rt.ctx.tick()
        during = turns - before
    before = turns
    for _ in range(10):
        await rt.ctx.tick()
    after = turns - before
    task.cancel()
    # After it, the workload is back to its millisecond slices (one may end among
    # the ten operations if the process was paused that long).
    assert during >= 10 and after <= 1, (during, after)
