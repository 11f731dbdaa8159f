"""The bitmap policy's cost on churn+hog in instructions, not seconds.

Wall-clock ratios on this shared 2-core machine wander by ±2%, about the size
of the effect. callgrind counts instructions executed, which does not depend
on what else the machine is doing. Each case runs `bench.bench_hinting.churn`
in a fresh interpreter under `valgrind --tool=callgrind`; a run with zero
operations (start-up, imports, allocator set-up) is subtracted from both.

    .venv/bin/python -m bench.bench_hinting_instructions
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.goals import Goal

OPS = 40_000

PROGRAM = """
import sys, uvloop
import bench.bench_hinting as b
b.OPS = int(sys.argv[2])
uvloop.run(b.churn(sys.argv[1], True))
"""


def instructions(policy: str, ops: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        r = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-c",
                PROGRAM,
                policy,
                str(ops),
            ],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        m = re.search(r"Collected : (\d+)", r.stderr)
        if r.returncode != 0 or not m:
            raise SystemExit(f"callgrind failed: {r.stderr[-500:]}")
        return int(m.group(1))


def main() -> dict[str, Any]:
    base = instructions("none", 0)
    none = instructions("none", OPS) - base
    bitmap = instructions("bitmap", OPS) - base
    return {
        "ops": OPS,
        "startup_instructions": base,
        "none_instructions": none,
        "bitmap_instructions": bitmap,
        "bitmap_cost_pct": round(100 * (bitmap / none - 1), 2),
    }


def goals(r: dict[str, Any]) -> list[Goal]:
    return [
        Goal(
            "bitmap hinting's cost on churn+hog, instructions",
            (r["bitmap_cost_pct"],),
            5.0,
            unit="%",
            at_most=True,
            note="callgrind: one exact count",
        )
    ]


if __name__ == "__main__":
    result = main()
    print(json.dumps(result, indent=2))
    print("\n".join(g.line() for g in goals(result)))
