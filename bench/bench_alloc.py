"""The allocator against its yardstick: pagehint's BuddyAllocator and a plain
dict-per-order buddy (bench/reference/plain_buddy.py) on the same states.

States: ``compact`` (the lowest half of RAM allocated page by page),
``random`` (each page allocated with probability 1/2), both at 1 GiB and
64 GiB, built with lab.bulk (seconds, not the minute page-by-page
allocation takes); ``cascade`` (all of 1 GiB free: every pair splits a 4 MiB
block down to one page and merges it back, ten levels each way). Each pair
allocates one page and frees a held page drawn in advance (the victims are the
same for both sides). pagehint runs with a no-op hook at order 9, as hinting
installs it. Rounds alternate the sides; rates are per CPU second (this
process's CPU time) and per wall second; medians.

    .venv/bin/python -m bench.bench_alloc
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from bench.common import Machine, interleave, median
from bench.goals import Goal, spread
from bench.reference.plain_buddy import PlainBuddy
from guest.mm import BuddyAllocator
from guest.mm.zone import Zone
from lab.bulk import allocated_pfns, compact_occupancy, random_occupancy, with_allocated_pages

PAIRS = 200_000
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
GIB = 1 << 30


class Allocator(Protocol):
    def alloc(self, order: int = 0) -> int: ...

    def free(self, pfn: int, order: int = 0) -> None: ...


def noop(zone: Zone, order: int) -> None:
    return None


def _pairs(a: Allocator, held: list[int], victims: list[int]) -> tuple[float, float]:
    """(pairs per CPU second, pairs per wall second)."""
    alloc, free, h = a.alloc, a.free, held
    c0, t0 = time.process_time(), time.perf_counter()
    for i in victims:
        p = alloc(0)
        free(h[i], 0)
        h[i] = p
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    return len(victims) / max(cpu, 1e-9), len(victims) / wall


def _cascade(a: Allocator, n: int) -> tuple[float, float]:
    alloc, free = a.alloc, a.free
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        free(alloc(0), 0)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    return n / max(cpu, 1e-9), n / wall


def _free_lists(mm: BuddyAllocator) -> list[list[int]]:
    return [[p for z in mm.zonelist for p in z.free_area[o]] for o in range(11)]


def _state(kind: str, ram: int) -> tuple[BuddyAllocator, float]:
    t0 = time.perf_counter()
    occ = random_occupancy(ram, 0.5, seed=1) if kind == "random" else compact_occupancy(ram, 0.5)
    mm = with_allocated_pages(ram, occ)
    return mm, time.perf_counter() - t0


def main() -> dict[str, Any]:
    machine = Machine.start()
    rng = random.Random(42)
    out: dict[str, Any] = {"rounds": ROUNDS, "pairs": PAIRS}
    build_s: dict[str, float] = {}
    for kind in ("compact", "random"):
        for ram in (GIB, 64 * GIB):
            name = f"{kind}@{ram // GIB}GiB"
            mm, build_s[name] = _state(kind, ram)
            mm.set_hook(noop, 9)
            held = allocated_pfns(mm)
            rng.shuffle(held)
            plain = PlainBuddy.same_state(_free_lists(mm))
            held_plain = list(held)
            victims = [rng.randrange(len(held)) for _ in range(PAIRS)]
            runs: dict[str, Callable[[], tuple[float, float]]] = {
                "pagehint": lambda mm=mm, h=held, v=victims: _pairs(mm, h, v),
                "plain": lambda p=plain, h=held_plain, v=victims: _pairs(p, h, v),
            }
            out[name] = _paired(runs)
            del mm, plain, held, held_plain
    out["hook_cost"] = _hook_cost(rng)
    mm = BuddyAllocator(GIB)
    mm.set_hook(noop, 9)
    plain = PlainBuddy.same_state(_free_lists(mm))
    out["cascade@1GiB"] = _paired(
        {"pagehint": lambda: _cascade(mm, PAIRS // 4), "plain": lambda: _cascade(plain, PAIRS // 4)}
    )
    out["build_s"] = {k: round(v, 2) for k, v in build_s.items()}
    # Flat with size: the 64 GiB rate over the 1 GiB rate, for each side.
    out["flat_64_vs_1"] = {
        kind: round(
            out[f"{kind}@64GiB"]["pagehint"]["cpu"] / out[f"{kind}@1GiB"]["pagehint"]["cpu"], 3
        )
        for kind in ("compact", "random")
    }
    out["plain_flat_64_vs_1"] = {
        kind: round(out[f"{kind}@64GiB"]["plain"]["cpu"] / out[f"{kind}@1GiB"]["plain"]["cpu"], 3)
        for kind in ("compact", "random")
    }
    out["machine"] = machine.report()
    return out


def _hook_cost(rng: random.Random) -> dict[str, Any]:
    """What the notify_free hook costs, on the random 1 GiB state: no hook, a no-op
    hook at order 9 (as hinting installs it), a no-op hook on every free."""
    mm, _ = _state("random", GIB)
    held = allocated_pfns(mm)
    victims = [rng.randrange(len(held)) for _ in range(PAIRS)]

    def run(order: int | None) -> float:
        mm.set_hook(None if order is None else noop, order or 0)
        return _pairs(mm, held, victims)[0]

    samples = interleave(
        {"off": lambda: run(None), "noop@9": lambda: run(9), "noop@0": lambda: run(0)}, ROUNDS
    )
    med = {k: median(v) for k, v in samples.items()}
    return {
        "pairs_per_cpu_s": {k: round(v) for k, v in med.items()},
        "cost_pct@9": round(100 * (1 - med["noop@9"] / med["off"]), 2),
        "cost_pct@0": round(100 * (1 - med["noop@0"] / med["off"]), 2),
    }


def _paired(runs: dict[str, Callable[[], tuple[float, float]]]) -> dict[str, Any]:
    """Rounds alternating the two sides; medians, and the median of per-round ratios."""
    samples = interleave(runs, ROUNDS)
    row: dict[str, Any] = {
        side: {
            "cpu": round(median([c for c, _ in s])),
            "wall": round(median([w for _, w in s])),
        }
        for side, s in samples.items()
    }
    row["ratios"] = [
        round(a[0] / b[0], 3) for a, b in zip(samples["pagehint"], samples["plain"], strict=True)
    ]
    row["ratio"] = round(median(row["ratios"]), 3)
    return row


STATES = ("compact@1GiB", "random@1GiB", "compact@64GiB", "random@64GiB", "cascade@1GiB")


def goals(r: dict[str, Any]) -> list[Goal]:
    out = [
        Goal(
            f"allocator, {name}, order-0 pairs vs plain buddy (CPU)", tuple(r[name]["ratios"]), 1.0
        )
        for name in STATES
    ]
    for kind, ratio in r["flat_64_vs_1"].items():
        out.append(
            Goal(
                f"allocator flat with size, {kind} 64 GiB / 1 GiB",
                (ratio,),
                0.9,
                note=f"plain buddy: {r['plain_flat_64_vs_1'][kind]}",
            )
        )
    return out


def table(r: dict[str, Any]) -> str:
    rows = [
        "| state | pagehint pairs / CPU s | plain buddy | ratio, median (min–max) |",
        "|---|---|---|---|",
    ]
    for name in STATES:
        row = r[name]
        rows.append(
            f"| {name} | {row['pagehint']['cpu']:,} | {row['plain']['cpu']:,} "
            f"| {spread(row['ratios'])} |"
        )
    hook = r["hook_cost"]
    return (
        "\n".join(rows)
        + f"\n\n{r['pairs']:,} alloc/free pairs a round, {r['rounds']} rounds. Hook cost on "
        f"random 1 GiB: a no-op hook at order 9 {hook['cost_pct@9']}%, on every free "
        f"{hook['cost_pct@0']}%. Building the states: "
        + ", ".join(f"{k} {v} s" for k, v in r["build_s"].items())
        + ".\n"
    )


if __name__ == "__main__":
    result = main()
    print(json.dumps(result, indent=2))
    print("\n".join(g.line() for g in goals(result)))
