"""Trace replay speed: the shipped kernel trace replayed as fast as possible.

Three ways over the same events (examples/traces/python-grow-shrink.trace.gz,
46,223 replayable events, mapped compact into a 3.7 GiB guest):

- ``replay``: the guest's replay loop (guest/trace/replay.py) with the merged
  design's hinting on (reporting policy, delay 0, order 9) reporting to the
  in-process loopback device — everything but the wire;
- ``replay, no hinting``: the same with policy none;
- ``allocator``: the same alloc_at/free calls in a bare loop, nothing else —
  the allocator's own speed on this stream (the yardstick: replay / allocator).

Each round builds a fresh guest; the initial allocation is not timed. Rates are
events per CPU second (this process); rounds alternate; medians.

    .venv/bin/python -m bench.bench_replay
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from bench.common import Machine, interleave, median
from bench.goals import Goal
from guest.hinting.device import LoopbackDevice
from guest.hinting.registry import make_policy
from guest.memory import GuestMemory
from guest.mm import BuddyAllocator
from guest.mm.constants import ALLOCATED
from guest.mm.exact import alloc_at, reshape_allocated
from guest.trace.parse import FREE, parse_trace
from guest.trace.replay import ReplayStats, plan_replay, prepare, replay
from guest.workloads.base import WorkloadContext
from pagehint.config import HintingConfig

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
GOAL_EVENTS_PER_S = 1_000_000  # issue 27
TRACE = Path(__file__).resolve().parents[1] / "examples" / "traces" / "python-grow-shrink.trace.gz"
PLAN = plan_replay(parse_trace(str(TRACE)), "compact")


def _replay(policy: str) -> float:
    async def go() -> float:
        mm = BuddyAllocator(PLAN.ram_bytes)
        cfg = HintingConfig(policy=policy, order=9, delay=0.0)
        device = LoopbackDevice(capacity=cfg.effective_capacity())
        pol = make_policy(cfg, mm, device)
        ctx = WorkloadContext(GuestMemory(mm))
        stats = ReplayStats()
        prepare(PLAN, ctx, stats)
        pol.start()
        c0 = time.process_time()
        await replay(PLAN, ctx, None, stats)
        cpu = time.process_time() - c0
        await pol.stop()
        assert stats.events == len(PLAN.trace)
        return stats.events / cpu

    return asyncio.run(go())


def _allocator() -> float:
    mm = BuddyAllocator(PLAN.ram_bytes)
    ctx = WorkloadContext(GuestMemory(mm))
    prepare(PLAN, ctx, ReplayStats())
    kinds, pfns, orders = PLAN.trace.kinds, PLAN.pfns, PLAN.trace.orders
    free, pg = mm.free, mm.pg
    c0 = time.process_time()
    for kind, pfn, order in zip(kinds, pfns, orders, strict=True):
        if kind == FREE:
            if pg[pfn] == ALLOCATED | order or reshape_allocated(mm, pfn, order) is None:
                free(pfn, order)
        else:
            alloc_at(mm, pfn, order)
    return len(kinds) / (time.process_time() - c0)


def main() -> dict[str, Any]:
    machine = Machine.start()
    runs = interleave(
        {
            "replay": lambda: _replay("reporting"),
            "replay, no hinting": lambda: _replay("none"),
            "allocator": _allocator,
        },
        ROUNDS,
    )
    rates = {k: round(median(v)) for k, v in runs.items()}
    t0 = time.perf_counter()
    parse_trace(str(TRACE))
    parse_s = time.perf_counter() - t0
    return {
        "events": len(PLAN.trace),
        "events_per_cpu_s": rates,
        "samples": {k: [round(x) for x in v] for k, v in runs.items()},
        "replay_vs_allocator": round(rates["replay"] / rates["allocator"], 3),
        "parse_lines_per_s": round(PLAN.trace.lines / parse_s),
        "rounds": ROUNDS,
        "machine": machine.report(),
    }


def goals(r: dict[str, Any]) -> list[Goal]:
    return [
        Goal(
            "trace replay with hinting, events per CPU second",
            tuple(r["samples"]["replay"]),
            GOAL_EVENTS_PER_S,
            unit="/s",
            note=f"the bare allocator on the same calls: {r['events_per_cpu_s']['allocator']:,}/s",
        )
    ]


def table(r: dict[str, Any]) -> str:
    rows = ["| run | events per CPU second, median (min–max) |", "|---|---|"]
    for k, v in r["samples"].items():
        rows.append(f"| {k} | {median(v):,.0f} ({min(v):,}–{max(v):,}) |")
    return (
        "\n".join(rows) + f"\n\n{r['events']:,} events, {r['rounds']} rounds; parsing the trace: "
        f"{r['parse_lines_per_s']:,} lines/s. "
        f"replay / bare allocator: {r['replay_vs_allocator']}.\n"
    )


if __name__ == "__main__":
    result = main()
    print(json.dumps(result, indent=2))
    print("\n".join(g.line() for g in goals(result)))
