"""The round trip of one order-0 chain on shm: what paces the reporting policy at order 0.

At reporting order 0 a 32 MiB pass is 256 chains of 32 order-0 ranges answered
one at a time (``page_reporting_cycle`` waits for each), so the pass takes 256
round trips and the period between passes is the 2 s delay plus that. The
issue's goal, 0.3 ms p50, keeps the period within 2.0–2.1 s (5% of the
kernel's, whose QEMU answers such a chain in tens of µs).

A real ``pagehint host --backend shm`` process; in this process the guest's
balloon driver (what ``pagehint guest`` uses) with the RAM file mapped. Each
round writes every page (resident on the host), then sends ``CHAINS`` chains
of 32 scattered order-0 pages, one outstanding, and takes the p50 and p99 of
their round trips. ``punch 32``: the same 32 holes of 4 KiB punched in a bare
loop the way the host does (madvise(MADV_REMOVE) on a mapping of the file),
the discard's own floor.

Each round also runs the same chains from a second guest whose stream crosses
the host's Unix socket (--queue-socket) instead of gRPC, the two taking turns.

    .venv/bin/python -m bench.bench_roundtrip
"""

from __future__ import annotations

import json
import mmap
import os
import time
from typing import Any

from bench.common import Machine, on_shm_host
from bench.goals import Goal, spread
from guest.balloon import BalloonDriver
from guest.mm import BuddyAllocator
from host.memory.punch import madv_remove
from pagehint.config import GuestConfig, HintingConfig
from pagehint.stats import percentiles

RAM = 1 << 30
PAGE = 4096
RANGES = 32
CHAINS = 2000
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
GOAL_P50_MS = 0.3  # issue 27


def _chains() -> list[list[tuple[int, int]]]:
    # Every fourth page, so each range is its own punch (no two adjacent).
    nr = RAM // PAGE
    return [[((i * RANGES + j) * 4 % nr, 0) for j in range(RANGES)] for i in range(CHAINS)]


async def _driver(
    addr: str, queue_socket: str | None, name: str
) -> tuple[BalloonDriver, mmap.mmap]:
    cfg = GuestConfig(
        ram_bytes=RAM,
        host=addr,
        guest_id=name,
        queue_socket=queue_socket,
        hinting=HintingConfig(capacity=RANGES),
    )
    driver = BalloonDriver(cfg, BuddyAllocator(RAM))
    await driver.start()
    assert driver.accepted is not None and driver.accepted.backend == "shm"
    fd = os.open(driver.accepted.shm_path, os.O_RDWR)
    try:
        return driver, mmap.mmap(fd, RAM, mmap.MAP_SHARED)
    finally:
        os.close(fd)


async def _round_trips(driver: BalloonDriver, m: mmap.mmap, fill: bytes) -> list[float]:
    """Every page written (resident on the host), then each chain's round trip, ms."""
    for off in range(0, RAM, len(fill)):
        m[off : off + len(fill)] = fill
    lat = []
    for chain in _chains():
        t0 = time.perf_counter()
        await driver.report(chain)
        lat.append((time.perf_counter() - t0) * 1000)
    return lat


async def measure(addr: str, queue_socket: str) -> dict[str, Any]:
    # One guest on each transport, against the same host, taking turns in each round.
    drivers = {
        "grpc": await _driver(addr, None, "rt-grpc"),
        "socket": await _driver(addr, queue_socket, "rt-socket"),
    }
    fill = b"\x5a" * (64 << 20)
    machine = Machine.start()
    p50: dict[str, list[float]] = {k: [] for k in drivers}
    p99: dict[str, list[float]] = {k: [] for k in drivers}
    floor: list[float] = []
    for _ in range(ROUNDS):
        for name, (driver, m) in drivers.items():
            p = percentiles(await _round_trips(driver, m, fill))
            p50[name].append(round(p["p50"] or 0.0, 4))
            p99[name].append(round(p["p99"] or 0.0, 4))
        m = drivers["grpc"][1]
        for off in range(0, RAM, len(fill)):
            m[off : off + len(fill)] = fill
        t0 = time.perf_counter()
        chains = _chains()
        for chain in chains:
            for pfn, _order in chain:
                madv_remove(m, pfn * PAGE, PAGE)  # as the host discards
        floor.append(round((time.perf_counter() - t0) * 1000 / len(chains), 4))
    for driver, m in drivers.values():
        await driver.stop()
        m.close()
    return {
        "p50_ms": p50["grpc"],
        "p99_ms": p99["grpc"],
        "socket_p50_ms": p50["socket"],
        "socket_p99_ms": p99["socket"],
        "punch32_ms": floor,
        "chains": CHAINS,
        "rounds": ROUNDS,
        "machine": machine.report(),
    }


def main() -> dict[str, Any]:
    return on_shm_host(measure)


def goals(r: dict[str, Any]) -> list[Goal]:
    note = f"32 bare 4 KiB punches: {spread(r['punch32_ms'], 3)} ms"
    # Runs from before the queue socket measured gRPC alone (no socket_p50_ms).
    which = [("--queue-socket", "socket_p50_ms"), ("gRPC stream", "p50_ms")]
    return [
        Goal(
            f"order-0 chain of 32 ranges on shm, round trip p50 ({name})",
            tuple(r[key]),
            GOAL_P50_MS,
            unit="ms",
            at_most=True,
            note=note,
        )
        for name, key in which
        if key in r
    ]


def table(r: dict[str, Any]) -> str:
    rows = []
    if "socket_p50_ms" in r:
        rows += [
            f"| round trip p50, queue socket | {spread(r['socket_p50_ms'], 3)} |",
            f"| round trip p99, queue socket | {spread(r['socket_p99_ms'], 3)} |",
        ]
    rows += [
        f"| round trip p50, gRPC stream | {spread(r['p50_ms'], 3)} |",
        f"| round trip p99, gRPC stream | {spread(r['p99_ms'], 3)} |",
        f"| 32 bare 4 KiB punches (the discard's floor) | {spread(r['punch32_ms'], 3)} |",
    ]
    both = ", the two transports taking turns in each" if "socket_p50_ms" in r else ""
    return (
        "| figure | ms, median (min–max) |\n|---|---|\n"
        + "\n".join(rows)
        + f"\n\n{r['chains']:,} chains a round, {r['rounds']} rounds{both}.\n"
    )


if __name__ == "__main__":
    result = main()
    print(json.dumps(result, indent=2))
    print("\n".join(g.line() for g in goals(result)))
