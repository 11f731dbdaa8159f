"""``pagehint loadtest``: N guest processes against one host with overcommit."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping

from guest.hinting.plugin import parse_policies
from lab.plot import files_line
from pagehint.cli.options import (
    add_host_memory_flags,
    host_memory_args,
    out_help,
    policies_help,
    run_folder,
)
from pagehint.cli.support import (
    Subparsers,
    add_flag,
    add_switch,
    choice,
    convert,
    nonneg_float,
    ops_rate,
    parse_ram,
    positive_float,
    positive_int,
    warn_old_names,
)
from pagehint.config import BACKENDS
from pagehint.errors import UsageError
from pagehint.logging import log_as, setup
from pagehint.units import format_size, parse_seconds, parse_size


def add_parser(sub: Subparsers, env: Mapping[str, str]) -> None:
    p = sub.add_parser(
        "loadtest",
        help="many guests against one overcommitted host",
        description="Starts --guests guest processes (workloads memhog, churn, fragment in "
        "turn) against one host whose --memory-limit is below their total RAM (or, with "
        "--host-memory, whose own memory and swap are).",
    )
    e = env
    add_flag(p, e, "--guests", default="8", help="guests to run (1..256)")
    add_flag(p, e, "--ram", default="1GiB", help="RAM per guest")
    add_flag(p, e, "--duration", default="30", help="seconds every guest runs")
    add_flag(
        p,
        e,
        "--memory-limit",
        old=("--capacity",),
        default=None,
        dest="memory_limit",
        help="host memory (default: half of the guests' total RAM)",
    )
    add_flag(
        p,
        e,
        "--guests-per-process",
        default="auto",
        help="guests sharing one process and event loop (default auto: one process per CPU)",
    )
    add_flag(
        p,
        e,
        "--ramp",
        default="0",
        help="spread the guests' starts over this many seconds (default 0: all boot at once)",
    )
    add_flag(p, e, "--backend", default="sim", help="sim | shm")
    add_host_memory_flags(p, e)
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
        "--rate",
        default=None,
        help="churn ops/s per guest (default 40000 / guests, at most 20000)",
    )
    _run_flags(p, e)
    add_flag(p, e, "--out", default=None, help=out_help("loadtest-"))
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead")
    p.set_defaults(handler=run)


def _run_flags(p: argparse.ArgumentParser, e: Mapping[str, str]) -> None:
    add_switch(
        p,
        e,
        "--force",
        help="with shm, start even if the guests could exhaust this machine's memory",
    )
    add_flag(
        p,
        e,
        "--transport",
        default="grpc",
        help="what carries the guests' reporting streams: grpc (default), or queue-socket "
        "(a Unix socket of the host's: host and guest --queue-socket)",
    )


def _capacity(
    a: argparse.Namespace, ram: int, total: int, backend: str
) -> tuple[int, tuple[str, ...]]:
    """(the host's memory, the --host-memory/--swap host flags or ()): a hard
    --memory-limit (default half the guests' RAM), or memory of its own."""
    if a.host_memory is not None and a.memory_limit is not None:
        raise UsageError(
            "give --host-memory (swap, OOM killer) or --memory-limit (a hard limit), not both"
        )
    host_memory = host_memory_args(a, backend, ram)
    if host_memory:
        return int(host_memory[1]), host_memory
    if a.memory_limit is None:
        return total // 2, ()
    capacity = convert(a.memory_limit, lambda s: parse_size(s, "size"), "--memory-limit")
    if capacity <= 0:
        raise UsageError("--memory-limit must be positive")
    return capacity, ()


def run(a: argparse.Namespace, env: Mapping[str, str]) -> int:
    from lab.loadtest import LoadtestConfig, format_loadtest, mem_available, run_loadtest

    guests = convert(a.guests, positive_int, "--guests")
    if guests > 256:
        raise UsageError("--guests: at most 256")
    ram = parse_ram(a.ram)
    total = guests * ram
    backend = choice(str(a.backend), BACKENDS, "--backend")
    capacity, host_memory = _capacity(a, ram, total, backend)
    if backend == "shm" and not a.force and total > 0.8 * mem_available():
        raise UsageError(
            f"--backend shm: {guests} guests × {format_size(ram)} = {format_size(total)} could "
            f"exhaust this machine's {format_size(mem_available())} available; "
            "lower --guests/--ram or pass --force"
        )
    policies = parse_policies(a.policy)
    if str(a.guests_per_process) == "auto":
        per_process = -(-guests // (os.cpu_count() or 1))
    else:
        per_process = convert(a.guests_per_process, positive_int, "--guests-per-process")
    rate = min(20000.0, 40000.0 / guests)
    if a.rate is not None:
        rate = convert(a.rate, ops_rate, "--rate")
    duration = convert(a.duration, lambda s: positive_float(str(parse_seconds(s))), "--duration")
    ramp = convert(a.ramp, lambda s: nonneg_float(str(parse_seconds(s))), "--ramp")
    if ramp and ramp >= duration:
        raise UsageError(
            f"--ramp {ramp:g}: must be shorter than --duration {duration:g} "
            "(or the first guests finish before the last start)"
        )
    cfg = LoadtestConfig(
        guests=guests,
        ram_bytes=ram,
        duration=duration,
        capacity_bytes=capacity,
        backend=backend,
        policies=policies,
        rate=rate,
        out=run_folder(a.out, "loadtest-"),  # made last, once every flag is checked
        guests_per_process=min(per_process, guests),
        ramp=ramp,
        host_memory_args=host_memory,
        queue_socket=_transport(str(a.transport)) == "queue-socket",
    )
    warn_old_names(a, "pagehint loadtest")
    setup(quiet=bool(a.json))
    log_as("loadtest")
    report = run_loadtest(cfg)
    if a.json:
        sys.stdout.write(
            json.dumps({k: v for k, v in report.items() if k != "host_timeline"}) + "\n"
        )
    else:
        sys.stdout.write(format_loadtest(report) + "\n\n" + files_line(report["files"]) + "\n")
    return 0 if not report["errors"] and report["data_loss_pages"] == 0 else 1


def _transport(value: str) -> str:
    if value not in ("grpc", "queue-socket"):
        raise UsageError(f"--transport {value}: grpc or queue-socket")
    return value
