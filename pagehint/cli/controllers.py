"""``pagehint controllers``: balloon controllers and free page reporting side by side.

One fleet, one job, once per run (reporting alone, each controller alone, each
with reporting, neither), each against a fresh host that the fleet's RAM
overcommits; a table and a plot of what each run cost the host and the guests
(lab/controllers.py says how).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from guest.workloads.boot import parse_orders
from pagehint.cli.density import _boot_flags, _size
from pagehint.cli.options import out_help, run_folder
from pagehint.cli.support import Subparsers, add_flag, convert, int_in, parse_ram, positive_float
from pagehint.config import BootConfig
from pagehint.errors import UsageError
from pagehint.logging import log_as, setup
from pagehint.units import parse_seconds

if TYPE_CHECKING:  # lab.controllers loads gRPC: only when a run starts
    from lab.controllers import ControllersConfig

# Guests in the fleet: two halves of two (A busy first, B between), each 2 GiB,
# so that 1.5x overcommit is a host of 5.3 GiB; sizes where a busy guest's 80%
# and the measured boot footprint (233 MiB, holes 0.7) fit with room.
GUESTS = 4
GUEST_RAM = "2GiB"
OVERCOMMIT = 1.5  # the fleet
# Seconds per phase: four policy periods of the slowest controllers (MOM's 10 s
# policy engine, Proxmox's 10 s pvestatd cycle) and more than six senpai intervals.
PHASE = "40"
MAX_GUESTS = 16
MAX_RUNS = 8


def add_parser(sub: Subparsers, env: Mapping[str, str]) -> None:
    from lab.controllers import DEFAULT_RUNS

    p = sub.add_parser(
        "controllers",
        help="balloon controllers (mom, proxmox, pressure) and reporting side by side",
        description="Runs one fleet and job once per run, each against a fresh host the fleet "
        "overcommits: reporting alone, each balloon controller alone and with reporting, and "
        "neither. Half the guests are busy in phases 1 and 3, the other half in phase 2. "
        "Prints per run what the host held over time (GiB·min), peak swap, OOM kills, the "
        "guests' allocation stalls and swap waits, and how long reclaiming took.",
    )
    e = env
    add_flag(p, e, "--runs", default=",".join(DEFAULT_RUNS), help="comma list of runs")
    add_flag(p, e, "--guests", default=str(GUESTS), help="guests per run (even)")
    add_flag(p, e, "--guest-ram", default=GUEST_RAM, help="RAM per guest")
    add_flag(
        p,
        e,
        "--overcommit",
        default=str(OVERCOMMIT),
        help="the fleet's RAM over the host's memory (host memory = guests x RAM / this)",
    )
    add_flag(p, e, "--phase", default=PHASE, help="seconds per phase (four phases)")
    add_flag(p, e, "--backend", default="sim", help="sim | shm")
    add_flag(
        p, e, "--vmm-overhead", default=None, help="per-guest VMM memory (default: the host's)"
    )
    _boot_flags(p, e)
    add_flag(p, e, "--out", default=None, help=out_help("controllers-"))
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")
    p.set_defaults(handler=run)


def config_from_args(a: argparse.Namespace) -> ControllersConfig:
    """Every flag checked, before anything starts or any folder is made."""
    from lab.controllers import ControllersConfig, parse_runs

    runs = parse_runs(str(a.runs))
    if len(runs) > MAX_RUNS:
        raise UsageError(f"--runs: at most {MAX_RUNS} runs")
    guests = convert(a.guests, int_in(2, MAX_GUESTS), "--guests")
    if guests % 2:
        raise UsageError(f"--guests {guests}: give an even number (two halves take turns)")
    overcommit = convert(a.overcommit, positive_float, "--overcommit")
    if not 0.1 <= overcommit <= 10:
        raise UsageError(f"--overcommit {overcommit:g}: give 0.1 to 10")
    phase = convert(a.phase, lambda s: positive_float(str(parse_seconds(s))), "--phase")
    if not 1 <= phase <= 3600:
        raise UsageError(f"--phase {phase:g}: give 1 to 3600 seconds")
    backend = str(a.backend)
    if backend not in ("sim", "shm"):
        raise UsageError(f"--backend: unknown value {backend!r} (choose from sim, shm)")
    boot = BootConfig(
        size_bytes=_size(a.boot_footprint, "--boot-footprint"),
        orders=parse_orders(str(a.boot_orders)),
        holes=convert(a.boot_holes, float, "--boot-holes"),
    )
    cfg = ControllersConfig(
        runs=runs,
        guests=guests,
        guest_ram_bytes=parse_ram(a.guest_ram, "--guest-ram"),
        overcommit=overcommit,
        phase_s=phase,
        boot=boot,
        out=Path(),  # made last, once every flag is checked
        backend=backend,
        vmm_overhead_bytes=None
        if a.vmm_overhead is None
        else _size(a.vmm_overhead, "--vmm-overhead"),
    )
    cfg.check()
    if backend == "shm":
        from lab.loadtest import mem_available

        need = len(runs) * cfg.host_memory_bytes
        if need > 0.8 * mem_available():
            raise UsageError(
                "--backend shm: every run's host memory is real memory here, more than 80% "
                "of what this machine has available"
            )
    return dataclasses.replace(cfg, out=run_folder(a.out, "controllers-"))


def run(a: argparse.Namespace, env: Mapping[str, str]) -> int:
    from lab.controllers_report import format_report, run_controllers, write_files
    from lab.plot import files_line

    cfg = config_from_args(a)
    setup(quiet=bool(a.json))
    log_as("controllers")
    report = run_controllers(cfg)
    files = write_files(cfg.out, report)
    if a.json:
        doc = {
            **report,
            "runs": [{k: v for k, v in r.items() if k != "host_timeline"} for r in report["runs"]],
            "files": files,
        }
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        sys.stdout.write(format_report(report) + "\n\n" + files_line(files) + "\n")
    return 0 if not any(r["errors"] for r in report["runs"]) else 1
