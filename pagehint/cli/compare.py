"""``pagehint compare``: one workload, several policies, one table and one picture."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping

from guest.hinting.plugin import parse_policies
from guest.workloads.scenario import load_scenario, resolve_scenario
from lab.plot import files_line
from pagehint.cli.options import (
    add_host_memory_flags,
    host_memory_args,
    out_help,
    policies_help,
    run_folder,
    scenario_help,
    workload_help,
)
from pagehint.cli.support import (
    Subparsers,
    add_flag,
    choice,
    convert,
    parse_address,
    parse_ram,
    positive_float,
)
from pagehint.config import BACKENDS, WORKLOADS
from pagehint.errors import UsageError
from pagehint.logging import log_as, setup
from pagehint.tls import load_tls
from pagehint.units import parse_seconds


def add_parser(sub: Subparsers, env: Mapping[str, str]) -> None:
    p = sub.add_parser(
        "compare",
        help="run one scenario under several policies and compare them",
        description="Runs the same scenario or workload once per policy against one host, "
        "then prints a table and writes summary.json, timeline.jsonl and timeline.png.",
    )
    e = env
    add_flag(
        p,
        e,
        "--policies",
        default="bitmap,reporting,none",
        help=policies_help("a comma list of policies, one guest each"),
    )
    add_flag(
        p,
        e,
        "--scenario",
        default=None,
        help=scenario_help("scenario file, or a shipped one") + " (default: memhog)",
    )
    add_flag(p, e, "--workload", default=None, help=workload_help() + " (instead of --scenario)")
    add_flag(
        p,
        e,
        "--duration",
        default=None,
        help="seconds per guest (default: the scenario's own length; 15 with --workload)",
    )
    add_flag(p, e, "--ram", default="1GiB", help="RAM of each guest")
    add_flag(p, e, "--seed", default="0", help="random seed of every guest's workload")
    add_flag(p, e, "--host", default=None, help="use this host instead of starting one")
    for flag, what in (
        ("--tls-cert", "a guest certificate"),
        ("--tls-key", "its key"),
        ("--tls-ca", "the host's CA"),
    ):
        add_flag(p, e, flag, default=None, help=f"with --host over mutual TLS: {what}")
    add_flag(p, e, "--token", default=None, help="with --host using --tokens: the guests' token")
    add_flag(p, e, "--backend", default="sim", help="backend of the host started: sim | shm")
    add_host_memory_flags(p, e)
    add_flag(p, e, "--out", default=None, help=out_help("compare-"))
    p.add_argument("--json", action="store_true", help="print summary.json instead of the table")
    p.set_defaults(handler=run)


def run(a: argparse.Namespace, env: Mapping[str, str]) -> int:
    policies = parse_policies(a.policies, "--policies")
    ram_bytes = parse_ram(a.ram)  # validate now; guests get the text as given
    if a.workload is not None and a.scenario is not None:
        raise UsageError("give --workload or --scenario, not both")
    scenario = None
    if a.workload is not None:
        choice(str(a.workload), WORKLOADS, "--workload")
    else:
        scenario = resolve_scenario(str("memhog" if a.scenario is None else a.scenario))
        load_scenario(scenario, ram_bytes)  # a scenario larger than --ram: now, one line
    duration = None
    if a.duration is not None:
        duration = convert(
            a.duration, lambda s: positive_float(str(parse_seconds(s))), "--duration"
        )
    elif a.workload is not None:
        duration = 15.0
    auth: list[str] = []
    tls = load_tls(a.tls_cert, a.tls_key, a.tls_ca)
    if tls is not None:
        auth += ["--tls-cert", a.tls_cert, "--tls-key", a.tls_key, "--tls-ca", a.tls_ca]
    token_env = {} if a.token is None else {"PAGEHINT_TOKEN": str(a.token)}
    if (auth or token_env) and a.host is None:
        raise UsageError("--tls-* and --token are for a host given with --host")
    host = None if a.host is None else parse_address(str(a.host), "--host")
    backend = choice(str(a.backend), BACKENDS, "--backend")
    if host is not None and (a.host_memory is not None or a.swap is not None):
        raise UsageError("--host-memory/--swap are for the host compare starts, not --host")
    host_args = host_memory_args(a, backend, ram_bytes)
    seed = convert(a.seed, int, "--seed")
    from lab.compare import CompareConfig, format_table, run_compare

    cfg = CompareConfig(
        policies=policies,
        ram=str(a.ram),
        scenario=scenario,
        workload=a.workload,
        duration=duration,
        seed=seed,
        host=host,
        extra_guest_args=tuple(auth),
        guest_env=token_env,
        guest_id=tls.identity if tls is not None else None,
        backend=backend,
        host_args=host_args,
        out=run_folder(a.out, "compare-"),  # made last, once every flag is checked
    )
    setup(quiet=bool(a.json))
    log_as("compare")
    report = run_compare(cfg)
    if a.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        sys.stdout.write(format_table(report) + "\n")
        sys.stdout.write("\n" + files_line(report["files"]) + "\n")
    lost = {p: s["data_loss_pages"] for p, s in report["results"].items() if s["data_loss_pages"]}
    for policy, pages in lost.items():
        sys.stderr.write(f"pagehint compare: DATA LOSS: the {policy} guest lost {pages} pages\n")
    return 1 if lost else 0
