"""Order-0 alloc+free pairs per second at 50% occupancy on a 4 GiB guest.

Cases, interleaved in one run:
  off       no hook installed
  noop@9    a no-op notify_free hook with min order 9 (how hinting installs it;
            the kernel's page_reporting_notify_free also returns early below
            page_reporting_order)
  noop@0    a no-op hook called after every free (the worst case for the hook)

Each pair allocates one page and frees a random held page (the victim index
is drawn in advance, so the RNG is not timed). Also: a 64 GiB guest's init
time and the process's peak RSS, measured in a fresh subprocess.

    .venv/bin/python -m bench.bench_alloc
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

from bench.common import interleave, median
from guest.mm import BuddyAllocator
from guest.mm.zone import Zone

PAIRS = 300_000
ROUNDS = 7


def noop(zone: Zone, order: int) -> None:
    return None


def main() -> dict[str, object]:
    mm = BuddyAllocator(4 << 30)
    rng = random.Random(42)
    half = mm.nr_pages // 2
    held = [mm.alloc(0) for _ in range(half)]
    rng.shuffle(held)
    victims = [rng.randrange(half) for _ in range(PAIRS)]

    def run(hook_order: int | None) -> float:
        if hook_order is None:
            mm.set_hook(None)
        else:
            mm.set_hook(noop, hook_order)
        alloc, free, h = mm.alloc, mm.free, held
        t0 = time.perf_counter()
        for i in victims:
            p = alloc(0)
            free(h[i], 0)
            h[i] = p
        return PAIRS / (time.perf_counter() - t0)

    samples = interleave(
        {"off": lambda: run(None), "noop@9": lambda: run(9), "noop@0": lambda: run(0)}, ROUNDS
    )
    med = {k: median(v) for k, v in samples.items()}
    init = subprocess.run(
        [sys.executable, "-c", INIT_PROBE], capture_output=True, text=True, check=True
    )
    init_stats = json.loads(init.stdout)
    result = {
        "pairs_per_s": {k: round(v) for k, v in med.items()},
        "hook_cost_pct@9": round(100 * (1 - med["noop@9"] / med["off"]), 2),
        "hook_cost_pct@0": round(100 * (1 - med["noop@0"] / med["off"]), 2),
        "init_64gib_s": init_stats["init_s"],
        "rss_64gib_mb": init_stats["rss_mb"],
    }
    return result


INIT_PROBE = """
import json, resource, time
t0 = time.perf_counter()
from guest.mm import BuddyAllocator
t1 = time.perf_counter()
mm = BuddyAllocator(64 << 30)
t2 = time.perf_counter()
mm.free(mm.alloc(0), 0)
print(json.dumps({"init_s": round(t2 - t1, 4),
                  "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""

if __name__ == "__main__":
    r = main()
    print(json.dumps(r, indent=2))
    print(
        f"off {r['pairs_per_s']['off']:,}/s  noop@9 {r['pairs_per_s']['noop@9']:,}/s "  # type: ignore[index]
        f"(cost {r['hook_cost_pct@9']}%)  noop@0 {r['pairs_per_s']['noop@0']:,}/s "  # type: ignore[index]
        f"(cost {r['hook_cost_pct@0']}%)"
    )
