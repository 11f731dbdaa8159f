"""Host discard throughput (GiB/s of reported memory punched) against raw fallocate.

Both sides punch a fully written 1 GiB RAM file under /dev/shm, in one run,
rounds alternating:

  host  the balloon device's path for chains of 32 order-9 ranges (64 MiB a
        chain): every check a chain goes through, then ShmRam.discard
        (coalesced madvise(MADV_REMOVE) calls on the host's mapping of the file)
  raw   fallocate(PUNCH_HOLE|KEEP_SIZE) on the same file size in 2 MiB calls

Re-filling the file between rounds is not timed.

    .venv/bin/python -m bench.bench_discard
"""

from __future__ import annotations

import json
import mmap
import os
import random
import tempfile
import time
from typing import Any

from bench.common import median
from bench.goals import Goal
from host.device import BalloonDevice
from host.memory.punch import allocated_bytes, punch_hole
from host.memory.shm import ShmBackend
from virtqueue import features as F
from virtqueue.codec import Negotiation

RAM = 1 << 30
ROUNDS = 7
PAGE = 4096


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        dev = BalloonDevice(ShmBackend(d))
        s, _fence = dev.table.negotiate(Negotiation("bench", RAM, PAGE, F.mask(F.REPORTING), 0))
        fd = os.open(s.ram.shm_path, os.O_RDWR)
        m = mmap.mmap(fd, RAM, mmap.MAP_SHARED)
        block = b"\x5a" * (64 << 20)
        chunks = list(range(0, RAM // PAGE, 512))  # order-9 pfns
        rng = random.Random(1)

        def fill() -> None:
            for off in range(0, RAM, len(block)):
                m[off : off + len(block)] = block
            assert allocated_bytes(fd) >= RAM

        def host() -> float:
            fill()
            order = chunks[:]
            rng.shuffle(order)  # chains name scattered blocks, as real reports do
            chains = [order[i : i + 32] for i in range(0, len(order), 32)]
            t0 = time.perf_counter()
            for i, c in enumerate(chains):
                used = dev.handle_report(s, i, c, [9] * len(c))
                assert used is not None and used.status == 0, used
            dt = time.perf_counter() - t0
            assert allocated_bytes(fd) == 0
            return RAM / dt / (1 << 30)

        def raw() -> float:
            fill()
            t0 = time.perf_counter()
            for off in range(0, RAM, 2 << 20):
                punch_hole(fd, off, 2 << 20)
            dt = time.perf_counter() - t0
            assert allocated_bytes(fd) == 0
            return RAM / dt / (1 << 30)

        samples: dict[str, list[float]] = {"host": [], "raw": []}
        for r in range(ROUNDS):
            for name in ("host", "raw") if r % 2 == 0 else ("raw", "host"):
                samples[name].append(host() if name == "host" else raw())
        m.close()
        os.close(fd)
        dev.table.end(s.token, "bench done")
        dev.backend.close()
    h, w = median(samples["host"]), median(samples["raw"])
    return {
        "host_gib_s": round(h, 2),
        "raw_gib_s": round(w, 2),
        "ratios": [round(a / b, 3) for a, b in zip(samples["host"], samples["raw"], strict=True)],
        "host_vs_raw": round(h / w, 3),
    }


def goals(r: dict[str, Any]) -> list[Goal]:
    return [
        Goal(
            "host discard (checks + punch), order-9 chains, vs raw punch-hole",
            tuple(r["ratios"]),
            0.8,
            note=f"{r['host_gib_s']} vs {r['raw_gib_s']} GiB/s",
        )
    ]


if __name__ == "__main__":
    result = main()
    print(json.dumps(result, indent=2))
    print("\n".join(g.line() for g in goals(result)))
