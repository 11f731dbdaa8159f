"""``pagehint compare``: one workload, several policies, one table and one picture."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from guest.workloads.builtin import BUILTINS
from guest.workloads.scenario import load_scenario, resolve_scenario
from pagehint.cli_support import (
    choice,
    convert,
    from_env,
    parse_policies,
    parse_ram,
    positive_float,
)
from pagehint.errors import UsageError
from pagehint.logging import make_logger
from pagehint.units import parse_seconds


def add_parser(sub: Any, env: Mapping[str, str]) -> None:
    p = sub.add_parser(
        "compare",
        help="run one scenario under several policies and compare them",
        description="Runs the same scenario or workload once per policy against one host, "
        "then prints a table and writes summary.json, timeline.jsonl and timeline.png.",
    )
    e = env
    p.add_argument("--policies", default=from_env(e, "--policies", "bitmap,reporting,none"))
    p.add_argument(
        "--scenario",
        default=from_env(e, "--scenario", None),
        help="scenario file or shipped name (default: memhog)",
    )
    p.add_argument("--workload", default=from_env(e, "--workload", None))
    p.add_argument("--duration", default=from_env(e, "--duration", None))
    p.add_argument("--ram", default=from_env(e, "--ram", "1GiB"))
    p.add_argument("--seed", default=from_env(e, "--seed", "0"))
    p.add_argument(
        "--host", default=from_env(e, "--host", None), help="use this host instead of starting one"
    )
    p.add_argument(
        "--backend", default=from_env(e, "--backend", "sim"), help="backend of the host started"
    )
    p.add_argument(
        "--out",
        default=from_env(e, "--out", None),
        help="output folder (default runs/compare-TIME)",
    )
    p.add_argument("--json", action="store_true", help="print summary.json instead of the table")
    p.set_defaults(handler=run)


def run(a: argparse.Namespace, env: Mapping[str, str]) -> int:
    policies = parse_policies(a.policies, "--policies")
    parse_ram(a.ram)  # validate now; guests get the text as given
    if a.workload and a.scenario:
        raise UsageError("give --workload or --scenario, not both")
    scenario = None
    if a.workload:
        choice(str(a.workload), tuple(sorted(BUILTINS)), "--workload")
    else:
        scenario = resolve_scenario(str(a.scenario or "memhog"))
        load_scenario(scenario)
    duration = None
    if a.duration is not None:
        duration = convert(
            a.duration, lambda s: positive_float(str(parse_seconds(s))), "--duration"
        )
    elif a.workload:
        duration = 15.0
    out = Path(a.out) if a.out else Path("runs") / time.strftime("compare-%Y%m%d-%H%M%S")
    from lab.compare import CompareConfig, format_table, run_compare

    cfg = CompareConfig(
        policies=policies,
        ram=str(a.ram),
        scenario=scenario,
        workload=a.workload,
        duration=duration,
        seed=convert(a.seed, int, "--seed"),
        host=a.host,
        backend=choice(str(a.backend), ("sim", "shm"), "--backend"),
        out=out,
    )
    log = make_logger("compare", quiet=bool(a.json))
    report = run_compare(cfg, log)
    if a.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        sys.stdout.write(format_table(report) + "\n")
        sys.stdout.write(f"\nwrote {out}/summary.json, timeline.jsonl, timeline.png\n")
    return 0
