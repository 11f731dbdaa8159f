"""``pagehint density``: how many guests fit on one host before it swaps, per policy.

Defaults are the RFC v10 cover letter's set-up (docs/plans/density-sources.md):
a 15 GB host with 4 GB of swap; the launch test's guests have 5 GB and run "a test
allocation program [that] allocates 4GB memory, touches it via memset and exits";
the memhog test's three guests have 6 GB and run `memhog 6G` one after another.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from guest.hinting.plugin import parse_policies
from guest.workloads.boot import format_orders, parse_orders
from pagehint.cli.options import out_help, policies_help, run_folder
from pagehint.cli.support import (
    Subparsers,
    add_flag,
    choice,
    convert,
    int_in,
    parse_ram,
    positive_float,
)
from pagehint.config import (
    BACKENDS,
    BOOT_FOOTPRINT_MEASURED,
    BOOT_HOLES_MEASURED,
    BOOT_ORDERS_MEASURED,
    DISCARDS,
    BootConfig,
)
from pagehint.errors import UsageError
from pagehint.logging import log_as, setup
from pagehint.units import format_size, parse_seconds, parse_size

if TYPE_CHECKING:  # lab.density loads gRPC: only when a run starts
    from lab.density import DensityConfig

MODES = ("launch", "memhog")
# Per mode: guest RAM, touch, guests. The cover letter (density-sources.md): launch
# test "Guest Memory = 5 GB", "allocates 4GB memory, touches it via memset"; memhog
# test "3 guests × 6 GiB", `memhog 6G` in one after another. Launch test guests: 16,
# over twice the most any of the letters fitted (v11: "7th with 26MB"), so a policy
# that fits more than 2019's hinting is counted, not capped; each guest here is an
# idle Python process of ~50 MB, so 16 fit a small machine.
MODE_DEFAULTS = {"launch": ("5GiB", "4GiB", 16), "memhog": ("6GiB", "6GiB", 3)}
MAX_GUESTS = 64  # guest processes on one machine at once
# A guest has settled once idle with its host resident unchanged this long: more
# than twice the merged design's 2 s delay between passes (page_reporting_delay),
# so a pass that ran out of budget and requested the next is not taken for the end.
SETTLE = "5"


def add_parser(sub: Subparsers, env: Mapping[str, str]) -> None:
    p = sub.add_parser(
        "density",
        help="how many guests fit on one host before it swaps, per policy",
        description="Launches guests one after another against a host with --host-memory and "
        "--swap (each boots, touches --touch, frees it and stays idle; the next starts once "
        "the last has settled) until the host first swaps, first kills a guest, or "
        "--guests-max; once per policy, each against a fresh host. --mode memhog runs the "
        "cover letter's memhog test instead: three guests' jobs one after another, timed.",
    )
    e = env
    add_flag(p, e, "--mode", default="launch", help="launch (count guests) | memhog (time jobs)")
    add_flag(p, e, "--host-memory", default="15GiB", help="host memory for guests (RFC v10 letter)")
    add_flag(p, e, "--swap", default="4GiB", help="host swap (RFC v10 letter)")
    add_flag(p, e, "--guest-ram", default=None, help="RAM per guest (default 5GiB; memhog 6GiB)")
    add_flag(
        p, e, "--touch", default=None, help="memory each guest touches (default 4GiB; memhog 6GiB)"
    )
    add_flag(
        p,
        e,
        "--policies",
        default="none,bitmap,reporting",
        help=policies_help("comma list, each run against a fresh host"),
    )
    add_flag(
        p, e, "--guests-max", default=None, help="most guests per policy (default 16; memhog 3)"
    )
    add_flag(
        p, e, "--settle", default=SETTLE, help="seconds a guest's host resident must hold still"
    )
    add_flag(
        p,
        e,
        "--interval",
        default=None,
        help="launch the next guest this many seconds after the last instead of when settled",
    )
    add_flag(p, e, "--backend", default="sim", help="sim | shm")
    add_flag(
        p, e, "--vmm-overhead", default=None, help="per-guest VMM memory (default: the host's)"
    )
    add_flag(
        p, e, "--discard", default=None, help="host discard: free | dontneed (default: host's)"
    )
    _boot_flags(p, e)
    add_flag(p, e, "--out", default=None, help=out_help("density-"))
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")
    p.set_defaults(handler=run)


def _boot_flags(p: argparse.ArgumentParser, e: Mapping[str, str]) -> None:
    add_flag(
        p,
        e,
        "--boot-footprint",
        default=f"{BOOT_FOOTPRINT_MEASURED >> 20}MiB",
        help="memory each guest's boot holds for the whole run (measured: README)",
    )
    add_flag(
        p,
        e,
        "--boot-orders",
        default=format_orders(BOOT_ORDERS_MEASURED),
        help="its blocks: ORDER:PERCENT of its bytes",
    )
    add_flag(
        p,
        e,
        "--boot-holes",
        default=f"{BOOT_HOLES_MEASURED:g}",
        help="free space between them, per byte",
    )


def _size(value: object, flag: str) -> int:
    text = str(value).strip()
    if text.startswith("-"):
        raise UsageError(f"{flag} {text}: must not be negative")
    return convert(text, lambda s: parse_size(s, "size"), flag)


def config_from_args(a: argparse.Namespace) -> DensityConfig:
    """Every flag checked, before anything starts or any folder is made."""
    from lab.density import DensityConfig, Plan, check_sizes

    mode = choice(str(a.mode), MODES, "--mode")
    ram_d, touch_d, guests_d = MODE_DEFAULTS[mode]
    host_memory = _size(a.host_memory, "--host-memory")
    swap = _size(a.swap, "--swap")
    ram = parse_ram(a.guest_ram if a.guest_ram is not None else ram_d, "--guest-ram")
    touch = _size(a.touch if a.touch is not None else touch_d, "--touch")
    guests = convert(
        a.guests_max if a.guests_max is not None else guests_d,
        int_in(1, MAX_GUESTS),
        "--guests-max",
    )
    vmm = None if a.vmm_overhead is None else _size(a.vmm_overhead, "--vmm-overhead")
    boot = BootConfig(
        size_bytes=_size(a.boot_footprint, "--boot-footprint"),
        orders=parse_orders(str(a.boot_orders)),
        holes=convert(a.boot_holes, float, "--boot-holes"),
    )
    check_sizes(host_memory, swap, ram, touch, boot, vmm)
    interval = None
    if a.interval is not None:
        interval = convert(
            a.interval, lambda s: positive_float(str(parse_seconds(s))), "--interval"
        )
    plan = Plan(
        guests_max=guests,
        settle=convert(a.settle, lambda s: positive_float(str(parse_seconds(s))), "--settle"),
        interval=interval,
        stop_at_swap=mode == "launch",
    )
    backend = choice(str(a.backend), BACKENDS, "--backend")
    discard = None if a.discard is None else choice(str(a.discard), DISCARDS, "--discard")
    if backend == "shm":
        from lab.loadtest import mem_available

        if host_memory > 0.8 * mem_available():
            raise UsageError(
                f"--backend shm: --host-memory {format_size(host_memory)} is real memory here, "
                f"more than 80% of this machine's {format_size(mem_available())} available"
            )
    return DensityConfig(
        mode="memhog" if mode == "memhog" else "launch",
        host_memory_bytes=host_memory,
        swap_bytes=swap,
        guest_ram_bytes=ram,
        touch_bytes=touch,
        policies=parse_policies(a.policies, "--policies"),
        plan=plan,
        backend=backend,
        boot=boot,
        out=run_folder(a.out, "density-"),  # made last, once every flag is checked
        vmm_overhead_bytes=vmm,
        discard=discard,
    )


def run(a: argparse.Namespace, env: Mapping[str, str]) -> int:
    from lab.density_report import format_density, run_density
    from lab.plot import files_line

    cfg = config_from_args(a)
    setup(quiet=bool(a.json))
    log_as("density")
    report = run_density(cfg)
    if a.json:
        doc = {
            **report,
            "policies": [
                {k: v for k, v in p.items() if k != "host_timeline"} for p in report["policies"]
            ],
        }
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        sys.stdout.write(format_density(report) + "\n\n" + files_line(report["files"]) + "\n")
    return 0 if not any(p["errors"] for p in report["policies"]) else 1
