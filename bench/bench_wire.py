"""Chains per second and ack latency over the gRPC virtqueue, host in its own process.

The guest side is the real BalloonDriver (what `pagehint guest` uses): each
chain carries 32 page ranges; the host (sim backend) checks and discards them
and answers with a used message. Window 1 = one chain outstanding at a time;
window 8 = eight concurrent reporters. Rounds alternate the two cases.

    .venv/bin/python -m bench.bench_wire
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import uvloop

from bench.common import median
from guest.balloon import BalloonDriver
from guest.mm import BuddyAllocator
from lab.procs import ProcessGroup
from pagehint.config import GuestConfig, HintingConfig
from pagehint.stats import percentiles

CHAINS = 3000
ROUNDS = 3
RANGES = 32


async def measure(addr: str) -> dict[str, object]:
    cfg = GuestConfig(
        ram_bytes=1 << 30, host=addr, guest_id="bench", hinting=HintingConfig(capacity=RANGES)
    )
    mm = BuddyAllocator(cfg.ram_bytes)
    driver = BalloonDriver(cfg, mm, lambda _m: None)
    await driver.start()
    # 32 disjoint order-0 ranges per chain, spread over RAM (valid for the host's checks).
    batches = [[((i * RANGES + j) * 8 % mm.nr_pages, 0) for j in range(RANGES)] for i in range(64)]

    async def reporter(n: int, lat: list[float]) -> None:
        for i in range(n):
            t0 = time.perf_counter()
            await driver.report(batches[i % len(batches)])
            lat.append((time.perf_counter() - t0) * 1000)

    results: dict[str, list[dict[str, float]]] = {"window1": [], "window8": []}
    await reporter(200, [])  # warm-up
    for r in range(ROUNDS):
        for case in ["window1", "window8"] if r % 2 == 0 else ["window8", "window1"]:
            lat: list[float] = []
            t0 = time.perf_counter()
            if case == "window1":
                await reporter(CHAINS, lat)
            else:
                await asyncio.gather(*(reporter(CHAINS // 8, lat) for _ in range(8)))
            elapsed = time.perf_counter() - t0
            p = percentiles(lat)
            results[case].append(
                {
                    "chains_per_s": len(lat) / elapsed,
                    "p50_ms": p["p50"] or 0,
                    "p99_ms": p["p99"] or 0,
                }
            )
    await driver.stop()
    out: dict[str, object] = {}
    for case, rows in results.items():
        out[case] = {k: round(median([row[k] for row in rows]), 3) for k in rows[0]}
    return out


def main() -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        group = ProcessGroup(Path(tmp))
        try:
            addr, _host = group.start_host(["--quiet"])
            return uvloop.run(measure(addr))
        finally:
            group.close()


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
