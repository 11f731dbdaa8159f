"""``pagehint demo``: the first thing to run."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from guest.hinting.plugin import parse_policies
from guest.workloads.scenario import load_scenario, resolve_scenario
from pagehint.cli_support import (
    Subparsers,
    add_flag,
    choice,
    convert,
    parse_ram,
    positive_float,
    positive_int,
)
from pagehint.errors import UsageError
from pagehint.logging import make_logger
from pagehint.units import parse_seconds


def add_parser(sub: Subparsers, env: Mapping[str, str]) -> None:
    p = sub.add_parser(
        "demo",
        help="one host and two guests on loopback, showing hinting at work",
        description="Starts a host and guests as separate processes, runs a scenario whose "
        "phases (allocate, free, idle, churn) show hinting at work, shows live progress, "
        "prints a summary and writes runs/<time>/summary.json, timeline.jsonl, timeline.png.",
    )
    e = env
    add_flag(p, e, "--guests", default="2")
    add_flag(p, e, "--ram", default="1GiB", help="RAM per guest")
    add_flag(
        p,
        e,
        "--policy",
        default="bitmap,reporting",
        help="policy, or a comma list given to guests in turn",
    )
    add_flag(p, e, "--backend", default="auto", help="auto | shm | sim")
    add_flag(p, e, "--duration", default="20", help="seconds per guest")
    add_flag(p, e, "--scenario", default="phases")
    add_flag(p, e, "--out", default=None, help="default runs/<time>")
    p.add_argument("--json", action="store_true", help="print the summary as JSON only")
    p.set_defaults(handler=run)


def run(a: argparse.Namespace, env: Mapping[str, str]) -> int:
    from lab.demo import DemoConfig, format_demo, run_demo, shm_available

    guests = convert(a.guests, positive_int, "--guests")
    if guests > 16:
        raise UsageError("--guests: the demo runs at most 16 guests (use `pagehint loadtest`)")
    parse_ram(a.ram)  # validate now; guests get the text as given
    policies = parse_policies(a.policy)
    backend = choice(str(a.backend), ("auto", "shm", "sim"), "--backend")
    if backend == "auto":
        backend = "shm" if shm_available() else "sim"
    scenario = resolve_scenario(str(a.scenario))
    load_scenario(scenario)
    out = Path(a.out) if a.out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    cfg = DemoConfig(
        guests=guests,
        ram=str(a.ram),
        policies=policies,
        backend=backend,
        duration=convert(a.duration, lambda s: positive_float(str(parse_seconds(s))), "--duration"),
        scenario=scenario,
        out=out,
        json=bool(a.json),
    )
    log = make_logger("demo", quiet=cfg.json)
    report = run_demo(cfg, log)
    if cfg.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        sys.stdout.write(format_demo(report) + "\n")
    return 0
