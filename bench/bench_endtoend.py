"""Memory returned end to end against raw punch-hole on the same file.

A real `pagehint host --backend shm` process; in this process a 1 GiB guest:
the buddy allocator, the reporting policy (delay 0, order 9, one report in
flight, as the kernel) and the balloon driver, with its RAM mapped from the
host's file. Each round fills all of RAM (every page resident on the host),
then frees it and times how long until the host holds nothing more it can
give back (the RAM file's allocated blocks, the kernel's own count, stop
falling), from the first free: the frees' time plus the wait after them.
Three ways to free: ``order9`` frees 2 MiB blocks; ``pages`` frees page by
page in random order (blocks form by merging); ``pages-in-order`` page by page
in address order, as munmap frees a region. With the kernel's per-CPU lists a
random-order free leaves the lists' last ``high`` pages scattered over RAM,
each keeping its 2 MiB block from merging, as in Linux (6.1 drains a local
list when allocation runs short, not when the guest idles), so little comes
back; in address order they pin a few blocks. ``raw``: the same file filled the same
way and punched in 2 MiB calls with no guest, no wire, no checks: the floor.
Rounds alternate the cases; medians. GiB/s counts the bytes that left the host.

    .venv/bin/python -m bench.bench_endtoend
"""

from __future__ import annotations

import asyncio
import json
import mmap
import os
import random
import tempfile
import time
from typing import Any

from bench.common import Machine, median, on_shm_host
from bench.goals import Goal, spread
from guest.balloon import BalloonDriver
from guest.hinting.registry import make_policy
from guest.mm import BuddyAllocator
from host.memory.punch import allocated_bytes, punch_hole
from pagehint.config import GuestConfig, HintingConfig

RAM = 1 << 30
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
FILL = b"\x5a" * (64 << 20)
SETTLE = 0.2  # seconds without a fall that end a measurement


def _fill(m: mmap.mmap) -> None:
    for off in range(0, RAM, len(FILL)):
        m[off : off + len(FILL)] = FILL


async def _returned(fd: int, policy_idle: Any, start_bytes: int, t0: float) -> tuple[int, float]:
    """Wait until the file stops shrinking; (bytes it shrank by since ``start_bytes``,
    seconds from ``t0`` to the last fall). Both from before the first free: memory
    the policy gave back while the frees went on counts, and so does their time."""
    last, last_t = allocated_bytes(fd), time.perf_counter()
    while True:
        await asyncio.sleep(0.001)
        now = allocated_bytes(fd)
        t = time.perf_counter()
        if now < last:
            last, last_t = now, t
        elif t - last_t > SETTLE and policy_idle():
            return start_bytes - last, last_t - t0


async def measure(addr: str, _queue_socket: str) -> dict[str, Any]:
    cfg = GuestConfig(
        ram_bytes=RAM,
        host=addr,
        guest_id="e2e",
        hinting=HintingConfig(policy="reporting", delay=0.0, order=9),
    )
    mm = BuddyAllocator(RAM)
    driver = BalloonDriver(cfg, mm)
    await driver.start()
    assert driver.accepted is not None and driver.accepted.backend == "shm"
    fd = os.open(driver.accepted.shm_path, os.O_RDWR)
    m = mmap.mmap(fd, RAM, mmap.MAP_SHARED)
    policy = make_policy(cfg.hinting, mm, driver)
    policy.start()
    rng = random.Random(7)

    async def guest_case(order: int, shuffled: bool = True) -> float:
        blocks = []
        while (pfn := mm.alloc(order)) >= 0:
            blocks.append(pfn)
        _fill(m)  # every page written: resident on the host
        if shuffled:
            rng.shuffle(blocks)
        else:
            blocks.sort()  # address order, as munmap frees a region
        await asyncio.sleep(0)
        before = allocated_bytes(fd)
        t0 = time.perf_counter()
        for i, pfn in enumerate(blocks):
            mm.free(pfn, order)
            if i % 512 == 511:
                await asyncio.sleep(0)  # let the worker run, as a workload would
        gone, secs = await _returned(fd, policy.idle, before, t0)
        return gone / secs / (1 << 30)

    def raw() -> float:
        with tempfile.NamedTemporaryFile(dir="/dev/shm") as f:
            os.ftruncate(f.fileno(), RAM)
            rm = mmap.mmap(f.fileno(), RAM, mmap.MAP_SHARED)
            _fill(rm)
            t0 = time.perf_counter()
            for off in range(0, RAM, 2 << 20):
                punch_hole(f.fileno(), off, 2 << 20)
            dt = time.perf_counter() - t0
            assert allocated_bytes(f.fileno()) == 0
            rm.close()
            return RAM / dt / (1 << 30)

    machine = Machine.start()
    samples: dict[str, list[float]] = {"order9": [], "pages": [], "pages-in-order": [], "raw": []}
    names = list(samples)
    for r in range(ROUNDS):
        for name in names if r % 2 == 0 else names[::-1]:
            if name == "raw":
                samples[name].append(raw())
            else:
                order = 9 if name == "order9" else 0
                samples[name].append(await guest_case(order, name != "pages-in-order"))
    await policy.stop()
    await driver.stop()
    m.close()
    os.close(fd)
    med = {k: round(median(v), 2) for k, v in samples.items()}
    return {
        "gib_per_s": med,
        "samples_gib_per_s": {k: [round(x, 3) for x in v] for k, v in samples.items()},
        # Paired: each round's guest figure over the same round's raw punch.
        "ratios": {
            k: [round(g / r, 3) for g, r in zip(samples[k], samples["raw"], strict=True)]
            for k in ("order9", "pages", "pages-in-order")
        },
        "order9_vs_raw": round(med["order9"] / med["raw"], 3),
        "pages_vs_raw": round(med["pages"] / med["raw"], 3),
        "rounds": ROUNDS,
        "machine": machine.report(),
    }


def main() -> dict[str, Any]:
    return on_shm_host(measure)


def goals(r: dict[str, Any]) -> list[Goal]:
    return [
        Goal("end to end, order-9 frees, vs raw punch-hole", tuple(r["ratios"]["order9"]), 0.6),
        Goal(
            "end to end, page-by-page frees (random order), vs raw punch-hole",
            tuple(r["ratios"]["pages"]),
            0.5,
        ),
        Goal(
            "end to end, page-by-page frees (address order), vs raw punch-hole",
            tuple(r["ratios"].get("pages-in-order", ())),
            None,
        ),
    ]


def table(r: dict[str, Any]) -> str:
    g, ratios = r["samples_gib_per_s"], r["ratios"]
    rows = ["| case | GiB/s, median (min–max) | vs raw, median (min–max) |", "|---|---|---|"]
    cases = (
        ("order9", "order-9 frees"),
        ("pages", "page-by-page frees, random order"),
        ("pages-in-order", "page-by-page frees, address order"),
        ("raw", "raw"),
    )
    for k, what in cases:
        if k not in g:
            continue
        ratio = "1" if k == "raw" else spread(ratios[k])
        rows.append(f"| {what} | {spread(g[k])} | {ratio} |")
    return "\n".join(rows) + f"\n\n{r['rounds']} rounds, alternating.\n"


if __name__ == "__main__":
    result = main()
    print(json.dumps(result, indent=2))
    print("\n".join(g.line() for g in goals(result)))
