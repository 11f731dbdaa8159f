"""What the kernel work's cue costs a busy workload (guest/sched.py).

One workload, a churn of order 0..3 allocations and frees on a 256 MiB sim
guest at an unbounded rate (the busiest a workload gets: each operation a few
microseconds), run for a fixed count of operations in four states of its
policy's worker, rounds alternating:

  idle     nothing under way: a yield every 512 operations or 1 ms of work
  stalled  one report out for the whole run, with a host that does not answer:
           the workload polls every POLL_S of its work until the report is
           HOST_LATE_S old, then takes its usual slices
  answering  reports back to back for the whole run, each answered ANSWER_S
           after it went out: the workload polls every POLL_S through each
           (the cost per second a pass spends waiting on a healthy host;
           reported, no goal: a real pass makes a few reports every 2 s)
  running  a pass under way for the whole run: a yield at every operation
           (a real pass lasts milliseconds; reported, no goal)

on uvloop (what pagehint runs) and on plain asyncio. The figure is operations
per CPU second of this process (the answering state's report task included),
each state against ``idle`` in the same round; the yields are counted in one
more, untimed, run of each state. The goal, stalled ≥ 0.95 × idle on uvloop: a
host that never answers must not tax the workload for as long as it takes (a
poll every POLL_S throughout cost 16-19%).

    .venv/bin/python -m bench.bench_sched
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import uvloop

from bench.common import interleave, median
from bench.goals import Goal
from guest.memory import GuestMemory
from guest.mm import BuddyAllocator
from guest.sched import HOST_LATE_S, POLL_S, KernelWork
from guest.workloads.base import WorkloadContext
from guest.workloads.builtin import churn_for
from pagehint.config import BARE_MEMORY

OPS = 300_000
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
STATES = ("idle", "stalled", "answering", "running")
# A 64 MiB chain of order-9 blocks discarded on shm at this machine's 6.3-6.8 GiB/s
# (bench_discard's raw punch-hole, 2026-12-05): 9-10 ms.
ANSWER_S = 0.01


async def _answering(kernel: KernelWork) -> None:
    while True:
        with kernel.waiting_on_host():
            kernel.written()  # on the stream at once
            await asyncio.sleep(ANSWER_S)


@contextlib.asynccontextmanager
async def _state(kernel: KernelWork, state: str) -> AsyncIterator[None]:
    if state == "stalled":
        with kernel.waiting_on_host():
            kernel.written()  # on the stream, and never answered
            yield
    elif state == "running":
        with kernel.running():
            yield
    elif state == "answering":
        reports = asyncio.create_task(_answering(kernel))
        await asyncio.sleep(0)  # the first report is out
        try:
            yield
        finally:
            reports.cancel()
    else:
        yield


async def _churn(state: str, count: bool) -> tuple[float, int]:
    """(operations per CPU second, yields if ``count``) of a churn of OPS operations."""
    kernel = KernelWork()
    ctx = WorkloadContext(GuestMemory(BuddyAllocator(256 << 20, model=BARE_MEMORY)), kernel=kernel)
    yields = 0
    if count:  # a frame more per yield: not in a timed run
        real_yield = ctx._yield_now

        async def counted() -> None:
            nonlocal yields
            yields += 1
            await real_yield()

        ctx._yield_now = counted  # type: ignore[method-assign]
    async with _state(kernel, state):
        c0 = time.process_time()
        await churn_for(ctx, 0.5, 1e9, ops=OPS)
        cpu = time.process_time() - c0
    done = ctx.stats.alloc_ops + ctx.stats.free_ops
    assert done == OPS, done
    return done / max(cpu, 1e-9), yields


def _run(loop: str, state: str, count: bool = False) -> tuple[float, int]:
    if loop == "uvloop":
        return uvloop.run(_churn(state, count))
    return asyncio.run(_churn(state, count))


def main() -> dict[str, Any]:
    out: dict[str, Any] = {
        "ops": OPS,
        "poll_s": POLL_S,
        "host_late_s": HOST_LATE_S,
        "answer_s": ANSWER_S,
    }
    for loop in ("uvloop", "asyncio"):
        cases: dict[str, Callable[[], tuple[float, int]]] = {
            s: functools.partial(_run, loop, s) for s in STATES
        }
        samples = interleave(cases, ROUNDS)
        rates = {s: [r for r, _ in samples[s]] for s in STATES}
        out[loop] = {
            "ops_per_cpu_s": {s: round(median(rates[s])) for s in STATES},
            "yields": {s: _run(loop, s, count=True)[1] for s in STATES},
            "vs_idle": {
                s: [round(a / b, 3) for a, b in zip(rates[s], rates["idle"], strict=True)]
                for s in STATES[1:]
            },
        }
    return out


def _rows(r: dict[str, Any]) -> Iterator[Goal]:
    for loop in ("uvloop", "asyncio"):
        rr = r[loop]
        ops, ys = rr["ops_per_cpu_s"], rr["yields"]
        yield Goal(
            f"workload beside a host that never answers, {loop}, vs idle",
            tuple(rr["vs_idle"]["stalled"]),
            0.95 if loop == "uvloop" else None,
            note=f"{ops['stalled']:,} vs {ops['idle']:,} ops/CPU s; "
            f"{ys['stalled']:,} vs {ys['idle']:,} yields",
        )
        yield Goal(
            f"workload beside reports answered in {r['answer_s'] * 1000:g} ms, back to back, "
            f"{loop}, vs idle",
            tuple(rr["vs_idle"]["answering"]),
            None,
            note=f"{ops['answering']:,} ops/CPU s; {ys['answering']:,} yields",
        )
        yield Goal(
            f"workload while a pass runs (yield per op), {loop}, vs idle",
            tuple(rr["vs_idle"]["running"]),
            None,
            note=f"{rr['ops_per_cpu_s']['running']:,} ops/CPU s",
        )


def goals(r: dict[str, Any]) -> list[Goal]:
    return list(_rows(r))


if __name__ == "__main__":
    result = main()
    print(json.dumps(result, indent=2))
    print("\n".join(g.line() for g in goals(result)))
