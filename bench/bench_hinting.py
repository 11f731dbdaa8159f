"""Cost of the bitmap policy (hook + worker) on churn, against `none`, in one run.

Two workloads on a 4 GiB guest, each run flat out on uvloop, yielding to the
loop every 512 operations so the hinting worker gets its turns:

  churn       random alloc/free of orders 0..3 around 50% occupancy
  churn+hog   the same, plus every 20,000 operations a 256 MiB group allocated
              page by page and then freed whole: it forms order-9/10 blocks,
              so the hook fires and the worker isolates and reports for real

The device is the in-process loopback (acknowledges at once): this measures
the guest-side cost, not the wire. Ops/s are medians over interleaved rounds.

    .venv/bin/python -m bench.bench_hinting
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import uvloop

from bench.common import interleave, median
from bench.goals import Goal
from guest.hinting.device import LoopbackDevice
from guest.hinting.registry import make_policy
from guest.mm import BuddyAllocator
from pagehint.config import HintingConfig

OPS = 200_000
ROUNDS = 9
RAM = 4 << 30


async def churn(policy_name: str, hog: bool, seed: int = 7) -> tuple[float, int]:
    mm = BuddyAllocator(RAM)
    cfg = HintingConfig(policy=policy_name)
    pol = make_policy(cfg, mm, LoopbackDevice(capacity=cfg.effective_capacity()))
    rng = random.Random(seed)
    held: list[tuple[int, int]] = []
    target = mm.nr_pages // 2
    held_pages = 0
    while held_pages < target:
        o = rng.randint(0, 3)
        held.append((mm.alloc(o), o))
        held_pages += 1 << o
    pol.start()
    alloc, free = mm.alloc, mm.free
    t0 = time.perf_counter()
    for i in range(OPS):
        if held and rng.random() >= 0.5 + 0.5 * (target - held_pages) / target:
            j = rng.randrange(len(held))
            held[j], held[-1] = held[-1], held[j]
            p, o = held.pop()
            free(p, o)
            held_pages -= 1 << o
        else:
            o = rng.randint(0, 3)
            p = alloc(o)
            if p >= 0:
                held.append((p, o))
                held_pages += 1 << o
        if hog and i % 20_000 == 0:
            big = [alloc(0) for _ in range(65536)]
            for p in big:
                if p >= 0:
                    free(p, 0)
        if i % 512 == 0:
            await asyncio.sleep(0)
    elapsed = time.perf_counter() - t0
    reported = pol.stats.reported_pages
    await pol.stop()
    hog_ops = (OPS // 20_000 + 1) * 65536 * 2 if hog else 0
    return (OPS + hog_ops) / elapsed, reported


def run(policy_name: str, hog: bool, reported: dict[str, int]) -> float:
    rate, rep = uvloop.run(churn(policy_name, hog))
    reported[f"{policy_name}/{'hog' if hog else 'churn'}"] = rep
    return rate


def main() -> dict[str, Any]:
    reported: dict[str, int] = {}
    samples = interleave(
        {
            "none/churn": lambda: run("none", False, reported),
            "bitmap/churn": lambda: run("bitmap", False, reported),
            "none/churn+hog": lambda: run("none", True, reported),
            "bitmap/churn+hog": lambda: run("bitmap", True, reported),
        },
        ROUNDS,
    )
    med = {k: median(v) for k, v in samples.items()}
    return {
        "ops_per_s": {k: round(v) for k, v in med.items()},
        "bitmap_cost_pct_churn": round(100 * (1 - med["bitmap/churn"] / med["none/churn"]), 2),
        "bitmap_cost_pct_churn+hog": round(
            100 * (1 - med["bitmap/churn+hog"] / med["none/churn+hog"]), 2
        ),
        "reported_pages_last_round": reported,
        "cost_pct": {
            w: [
                round(100 * (1 - b / n), 2)
                for n, b in zip(samples[f"none/{w}"], samples[f"bitmap/{w}"], strict=True)
            ]
            for w in ("churn", "churn+hog")
        },
    }


def goals(r: dict[str, Any]) -> list[Goal]:
    return [
        Goal(f"bitmap hinting's cost on {w}, wall clock", tuple(v), 5.0, unit="%", at_most=True)
        for w, v in r["cost_pct"].items()
    ]


if __name__ == "__main__":
    result = main()
    print(json.dumps(result, indent=2))
    print("\n".join(g.line() for g in goals(result)))
