"""``pagehint demo``: the first thing to run."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping

from guest.hinting.plugin import parse_policies
from guest.workloads.scenario import load_scenario, resolve_scenario
from pagehint.cli.options import out_help, policies_help, run_folder, scenario_help
from pagehint.cli.support import (
    Subparsers,
    add_flag,
    choice,
    convert,
    parse_ram,
    positive_float,
    positive_int,
)
from pagehint.errors import UsageError
from pagehint.logging import log_as, setup
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
    add_flag(p, e, "--guests", default="2", help="guests to start (1..16)")
    add_flag(p, e, "--ram", default="1GiB", help="RAM per guest")
    add_flag(
        p,
        e,
        "--policy",
        default="bitmap,reporting",
        help=policies_help("a policy, or a comma list given to guests in turn"),
    )
    add_flag(
        p,
        e,
        "--backend",
        default="auto",
        help="auto (shm where /dev/shm is writable, else sim) | shm | sim",
    )
    add_flag(p, e, "--duration", default="20", help="seconds per guest")
    add_flag(p, e, "--scenario", default="phases", help=scenario_help())
    add_flag(p, e, "--out", default=None, help=out_help(""))
    p.add_argument("--json", action="store_true", help="print the summary as JSON only")
    p.set_defaults(handler=run)


def run(a: argparse.Namespace, env: Mapping[str, str]) -> int:
    from lab.demo import DemoConfig, format_demo, run_demo, shm_available

    guests = convert(a.guests, positive_int, "--guests")
    if guests > 16:
        raise UsageError("--guests: the demo runs at most 16 guests (use `pagehint loadtest`)")
    ram_bytes = parse_ram(a.ram)  # validate now; guests get the text as given
    policies = parse_policies(a.policy)
    backend = choice(str(a.backend), ("auto", "shm", "sim"), "--backend")
    if backend == "auto":
        backend = "shm" if shm_available() else "sim"
    scenario = resolve_scenario(str(a.scenario))
    load_scenario(scenario, ram_bytes)  # a scenario larger than --ram: now, one line
    duration = convert(a.duration, lambda s: positive_float(str(parse_seconds(s))), "--duration")
    cfg = DemoConfig(
        guests=guests,
        ram=str(a.ram),
        policies=policies,
        backend=backend,
        duration=duration,
        scenario=scenario,
        out=run_folder(a.out, ""),  # made last, once every flag is checked
        json=bool(a.json),
    )
    setup(quiet=cfg.json)
    log_as("demo")
    report = run_demo(cfg)
    if cfg.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        sys.stdout.write(format_demo(report) + "\n")
    return 0
