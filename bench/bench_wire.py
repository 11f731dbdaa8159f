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
import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

from bench.common import Machine, median, proc_cpu_seconds
from bench.goals import Goal
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


class ClientProcess:
    """One side's clients (``streams`` of them) in a process of their own, driven
    over a pipe: each ``run`` line is one measurement. Kept alive across rounds,
    so sessions are set up once, as the pagehint guest's are."""

    def __init__(self, side: str, addr: str, streams: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_wire", "client", side, addr, str(streams)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "GRPC_VERBOSITY": "NONE"},
        )
        if self._line() != "ready":
            raise RuntimeError(f"{side} client with {streams} streams did not start")

    def _line(self, timeout: float = 300.0) -> str:
        """The child's next line; a child that dies or hangs is an error, not a hang."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            raise RuntimeError(f"a bench client process ended or hung (exit {self.proc.wait()})")
        return line.strip()

    def run(self, per_stream: int, window: int, host_pid: int) -> dict[str, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{per_stream} {window} {host_pid}\n")
        self.proc.stdin.flush()
        row: dict[str, float] = json.loads(self._line())
        return row

    def close(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _client_main(side: str, addr: str, streams: int) -> None:
    make = _pagehint_clients if side == "pagehint" else _bare_clients
    reports, stop = await make(addr, streams)
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        per, window, host_pid = map(int, line.split())
        print(json.dumps(await _run(reports, per, window, host_pid)), flush=True)
    await stop()


CASES: list[tuple[str, int, int, int]] = [  # name, streams, window, chains per stream
    ("window1", 1, 1, CHAINS),
    ("window8", 1, 8, CHAINS),
    *(
        (f"guests{g}", g, 1, MULTI_CHAINS * 16 // g if g < 16 else MULTI_CHAINS)
        for g in GUEST_COUNTS
    ),
]


def measure(sides: dict[str, tuple[str, int]]) -> dict[str, Any]:
    """Paired rounds: each case runs on both sides back to back, order alternating."""
    machine = Machine.start()
    samples: dict[str, dict[str, list[dict[str, float]]]] = {
        c[0]: {"pagehint": [], "bare": []} for c in CASES
    }
    clients: dict[tuple[str, int], ClientProcess] = {}
    try:
        for side, (addr, _pid) in sides.items():
            for g in sorted({c[1] for c in CASES}):
                clients[(side, g)] = ClientProcess(side, addr, g)
        for side, (_addr, pid) in sides.items():  # warm-up
            clients[(side, 1)].run(200, 1, pid)
        for r in range(ROUNDS):
            for name, streams, window, per in CASES:
                order = ["pagehint", "bare"] if r % 2 == 0 else ["bare", "pagehint"]
                for side in order:
                    row = clients[(side, streams)].run(per, window, sides[side][1])
                    samples[name][side].append(row)
                    print(f"round {r} {name} {side}: {row['chains_per_s']:.0f}/s", file=sys.stderr)
    finally:
        for c in clients.values():
            c.close()
    out: dict[str, Any] = {"rounds": ROUNDS, "machine": machine.report()}
    for name, by_side in samples.items():
        row: dict[str, Any] = {}
        for side, rows in by_side.items():
            row[side] = {k: round(median([x[k] for x in rows]), 3) for k in rows[0]}
        # Ratio per round (paired), then the median of the ratios.
        row["ratios"] = [
            round(p["chains_per_s"] / b["chains_per_s"], 3)
            for p, b in zip(by_side["pagehint"], by_side["bare"], strict=True)
        ]
        row["ratio"] = round(median(row["ratios"]), 3)
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
            return measure(
                {"pagehint": (ph_addr, ph.pid), "bare": (ready.read_text().strip(), bare.pid)}
            )
        finally:
            bare.terminate()
            bare.wait(10)
            group.close()


def goals(r: dict[str, Any]) -> list[Goal]:
    g = [r[f"guests{n}"]["pagehint"]["host_cpu_us"] for n in GUEST_COUNTS]
    b = [r[f"guests{n}"]["bare"]["host_cpu_us"] for n in GUEST_COUNTS]
    return [
        Goal("wire, window 1, chains/s vs bare grpc.aio", tuple(r["window1"]["ratios"]), 0.9),
        Goal("wire, window 8, chains/s vs bare grpc.aio", tuple(r["window8"]["ratios"]), 0.9),
        Goal(
            f"wire, host CPU per chain, {GUEST_COUNTS[-1]} guests over 1",
            (round(g[-1] / g[0], 3),),
            1.0,
            at_most=True,
            note=f"bare grpc.aio: {b[-1] / b[0]:.2f}",
        ),
    ]


def table(r: dict[str, Any]) -> str:
    rows = [
        "| case | pagehint chains/s | bare chains/s | ratio, median (min–max) "
        "| p50 ms pagehint / bare | CPU µs per chain, guest / host: pagehint | bare |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, *_ in CASES:
        row = r[name]
        p, b = row["pagehint"], row["bare"]
        rows.append(
            f"| {name} | {p['chains_per_s']:,.0f} | {b['chains_per_s']:,.0f} "
            f"| {row['ratio']:.2f} ({min(row['ratios']):.2f}–{max(row['ratios']):.2f}) "
            f"| {p['p50_ms']:.3f} / {b['p50_ms']:.3f} "
            f"| {p['guest_cpu_us']:.0f} / {p['host_cpu_us']:.0f} "
            f"| {b['guest_cpu_us']:.0f} / {b['host_cpu_us']:.0f} |"
        )
    return (
        "\n".join(rows)
        + f"\n\n{r['rounds']} rounds; each side's clients in a process of their own.\n"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        uvloop.run(_client_main(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    else:
        result = main()
        print(json.dumps(result, indent=2))
        print("\n".join(g.line() for g in goals(result)))
