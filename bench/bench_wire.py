"""The wire against its yardstick: pagehint's guest driver and host against a bare
grpc.aio bidi stream carrying the same payload, measured in paired rounds.

pagehint: the real BalloonDriver (what `pagehint guest` uses) against a real
`pagehint host` process (sim backend): every chain checked, discarded in the
ledger, booked and answered. bare: bench/reference/bare_grpc.py, a server that
only answers each chain's id, and a client that writes chains and reads answers.
Both send chains of 32 order-0 ranges.

Cases: window 1 (one chain outstanding: the kernel's way), window 8 (eight
reporters), and "guests N" (N streams at once, window 1 each) for the host's
CPU per chain as guests are added. Each round runs both sides back to back in
alternating order; medians over rounds. CPU time per chain is the guest's (this
process) and the host's (its /proc stat), so a noisy machine shows up as wall
time, not as cost.

    .venv/bin/python -m bench.bench_wire
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

from bench.common import Machine, goal_line, median, proc_cpu_seconds
from bench.reference.bare_grpc import BareClient
from guest.balloon import BalloonDriver
from guest.mm import BuddyAllocator
from lab.procs import ProcessGroup
from pagehint.config import GuestConfig, HintingConfig
from pagehint.stats import percentiles

CHAINS = 3000
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
RANGES = 32
GUEST_COUNTS = (1, 4, 16)
MULTI_CHAINS = 400  # per stream in the "guests N" cases

Report = Callable[[list[tuple[int, int]]], Awaitable[None]]


def _batches(nr_pages: int) -> list[list[tuple[int, int]]]:
    # 32 disjoint order-0 ranges per chain, spread over RAM (valid for the host's checks).
    return [[((i * RANGES + j) * 8 % nr_pages, 0) for j in range(RANGES)] for i in range(64)]


async def _run(
    reports: list[Report], per_stream: int, window: int, host_pid: int
) -> dict[str, float]:
    """Drive ``window`` reporters per stream; rates, latency and CPU per chain."""
    batches = _batches((1 << 30) >> 12)
    lat: list[float] = []

    async def reporter(report: Report, n: int) -> None:
        for i in range(n):
            t0 = time.perf_counter()
            await report(batches[i % len(batches)])
            lat.append((time.perf_counter() - t0) * 1000)

    h0 = proc_cpu_seconds(host_pid)
    c0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(
        *(reporter(r, per_stream // window) for r in reports for _ in range(window))
    )
    wall = time.perf_counter() - t0
    guest_cpu = time.process_time() - c0
    host_cpu = proc_cpu_seconds(host_pid) - h0
    n = len(lat)
    p = percentiles(lat)
    return {
        "chains_per_s": n / wall,
        "p50_ms": p["p50"] or 0.0,
        "p99_ms": p["p99"] or 0.0,
        "guest_cpu_us": 1e6 * guest_cpu / n,
        "host_cpu_us": 1e6 * host_cpu / n,
    }


async def _pagehint_clients(
    addr: str, n: int
) -> tuple[list[Report], Callable[[], Awaitable[None]]]:
    drivers = []
    for i in range(n):
        cfg = GuestConfig(
            ram_bytes=1 << 30,
            host=addr,
            guest_id=f"bench{n}-{i}",
            hinting=HintingConfig(capacity=RANGES),
        )
        d = BalloonDriver(cfg, BuddyAllocator(cfg.ram_bytes))
        await d.start()
        drivers.append(d)

    async def stop() -> None:
        for d in drivers:
            await d.stop()

    return [d.report for d in drivers], stop


async def _bare_clients(addr: str, n: int) -> tuple[list[Report], Callable[[], Awaitable[None]]]:
    clients = [BareClient(addr) for _ in range(n)]
    for c in clients:
        await c.start()

    async def stop() -> None:
        for c in clients:
            await c.stop()

    def make(c: BareClient) -> Report:
        async def report(batch: list[tuple[int, int]]) -> None:
            await c.report([p for p, _ in batch], [o for _, o in batch])

        return report

    return [make(c) for c in clients], stop


async def measure(ph_addr: str, ph_pid: int, bare_addr: str, bare_pid: int) -> dict[str, Any]:
    machine = Machine.start()
    sides: dict[str, tuple[str, int, Any]] = {
        "pagehint": (ph_addr, ph_pid, _pagehint_clients),
        "bare": (bare_addr, bare_pid, _bare_clients),
    }
    cases: list[tuple[str, int, int, int]] = [  # name, streams, window, chains per stream
        ("window1", 1, 1, CHAINS),
        ("window8", 1, 8, CHAINS),
        *(
            (f"guests{g}", g, 1, MULTI_CHAINS * 16 // g if g < 16 else MULTI_CHAINS)
            for g in GUEST_COUNTS
        ),
    ]
    samples: dict[str, dict[str, list[dict[str, float]]]] = {
        c[0]: {"pagehint": [], "bare": []} for c in cases
    }
    clients: dict[tuple[str, int], tuple[list[Report], Callable[[], Awaitable[None]]]] = {}
    for side, (addr, _pid, make) in sides.items():
        for g in sorted({c[1] for c in cases}):
            clients[(side, g)] = await make(addr, g)
    for side, (_addr, pid, _m) in sides.items():  # warm-up
        await _run(clients[(side, 1)][0], 200, 1, pid)
    for r in range(ROUNDS):
        for name, streams, window, per in cases:
            order = ["pagehint", "bare"] if r % 2 == 0 else ["bare", "pagehint"]
            for side in order:
                reports = clients[(side, streams)][0]
                row = await _run(reports, per, window, sides[side][1])
                samples[name][side].append(row)
                print(f"round {r} {name} {side}: {row['chains_per_s']:.0f}/s", file=sys.stderr)
    for _reports, stop in clients.values():
        await stop()
    out: dict[str, Any] = {"rounds": ROUNDS, "machine": machine.report()}
    for name, by_side in samples.items():
        row: dict[str, Any] = {}
        for side, rows in by_side.items():
            row[side] = {k: round(median([x[k] for x in rows]), 3) for k in rows[0]}
        # Ratio per round (paired), then the median of the ratios.
        row["ratio"] = round(
            median(
                [
                    p["chains_per_s"] / b["chains_per_s"]
                    for p, b in zip(by_side["pagehint"], by_side["bare"], strict=True)
                ]
            ),
            3,
        )
        out[name] = row
    return out


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        group = ProcessGroup(Path(tmp))
        ready = Path(tmp) / "bare.addr"
        bare = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.reference.bare_grpc",
                "serve",
                "--ready-file",
                str(ready),
            ],
            env={**os.environ, "GRPC_VERBOSITY": "NONE"},
        )
        try:
            ph_addr, ph = group.start_host(["--quiet"])
            deadline = time.monotonic() + 30
            while not ready.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            return uvloop.run(measure(ph_addr, ph.pid, ready.read_text().strip(), bare.pid))
        finally:
            bare.terminate()
            bare.wait(10)
            group.close()


def verdicts(r: dict[str, Any]) -> list[str]:
    lines = [
        goal_line("wire, window 1, chains/s vs bare grpc.aio", r["window1"]["ratio"], 0.9),
        goal_line("wire, window 8, chains/s vs bare grpc.aio", r["window8"]["ratio"], 0.9),
    ]
    g = [r[f"guests{n}"]["pagehint"]["host_cpu_us"] for n in GUEST_COUNTS]
    b = [r[f"guests{n}"]["bare"]["host_cpu_us"] for n in GUEST_COUNTS]
    lines.append(
        f"{'host CPU/chain at ' + '/'.join(map(str, GUEST_COUNTS)) + ' guests':<46} "
        f"pagehint {' / '.join(f'{x:.0f}' for x in g)} µs, "
        f"bare {' / '.join(f'{x:.0f}' for x in b)} µs"
        f"  goal: falls as guests are added — {'met' if g[-1] < g[0] else 'NOT met'}"
    )
    return lines


if __name__ == "__main__":
    result = main()
    print(json.dumps(result, indent=2))
    print("\n".join(verdicts(result)))
