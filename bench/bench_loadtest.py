"""Load tests of 1, 8 and 32 guests (1 GiB each, 30 s, sim backend) in one run.

Runs `pagehint loadtest` three times and records chains/s and ack latency.
Guests run workloads memhog, churn and fragment in turn, policies bitmap and
reporting in turn; churn's rate per guest is 40,000/guests ops/s (at most
20,000) so the 2-core machine is shared, not swamped.

    .venv/bin/python -m bench.bench_loadtest
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

GUESTS = (1, 8, 32)


def main() -> dict[str, object]:
    out: dict[str, object] = {}
    for n in GUESTS:
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
                    "1GiB",
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
                out[f"{n}_guests"] = {"error": r.stderr.strip().splitlines()[-1:]}
                continue
            s = json.loads(r.stdout)
            out[f"{n}_guests"] = {
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


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
