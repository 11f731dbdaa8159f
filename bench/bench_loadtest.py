"""Load tests of 32, 64, 128 and 256 guests (256 MiB each, 30 s, sim backend).

Runs `pagehint loadtest` once per size, guests sharing one process per CPU
(the default), first all booting at once and then with their starts spread
over 5 s (--ramp 5), and records ack latency and the host's CPU. Guests run
workloads memhog, churn and fragment in turn, policies bitmap and reporting
in turn; churn's rate per guest is 40,000/guests ops/s.

    .venv/bin/python -m bench.bench_loadtest
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from typing import Any

GUESTS = (32, 64, 128, 256)
RAMPS = (0, 5)


def main() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n, ramp in ((n, ramp) for ramp in RAMPS for n in GUESTS):
        with tempfile.TemporaryDirectory() as tmp:
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pagehint",
                    "loadtest",
                    "--guests",
                    str(n),
                    "--ram",
                    "256MiB",
                    "--ramp",
                    str(ramp),
                    "--duration",
                    "30",
                    "--out",
                    tmp,
                    "--json",
                ],
                capture_output=True,
                text=True,
                timeout=900,
            )
            if r.returncode != 0:
                out[f"{n}_guests_ramp{ramp}"] = {"error": r.stderr.strip().splitlines()[-1:]}
                continue
            s = json.loads(r.stdout)
            out[f"{n}_guests_ramp{ramp}"] = {
                "processes": s["guest_processes"],
                "host_cpu_share": s["host_cpu_share"],
                "chains_per_s": s["chains_per_s"],
                "ack_p50_ms": s["ack_latency_ms"]["p50"],
                "ack_p99_ms": s["ack_latency_ms"]["p99"],
                "ack_max_ms": s["ack_latency_ms"]["max"],
                "host_peak_gib": round(s["host_resident_peak_bytes"] / 2**30, 2),
                "overcommit_achieved": s["overcommit_ratio"],
                "errors": s["errors"],
                "alloc_failures": s["alloc_failures"],
                "report_failures": s["report_failures"],
            }
    return out


def verdicts(r: dict[str, Any]) -> list[str]:
    lines = []
    for ramp in RAMPS:
        row = r.get(f"256_guests_ramp{ramp}", {})
        p99 = row.get("ack_p99_ms")
        ok = p99 is not None and p99 <= 50 and not row.get("errors")
        lines.append(
            f"{'loadtest 256 x 256 MiB, ramp ' + str(ramp) + ' s, ack p99':<46} "
            f"{p99} ms  goal <= 50 ms, 0 errors  {'met' if ok else 'NOT met'}"
        )
    return lines


if __name__ == "__main__":
    result = main()
    print(json.dumps(result, indent=2))
    print("\n".join(verdicts(result)))
