"""``pagehint migrate``: snapshots of one guest with and without free page hints
(lab/migrate.py): pages copied and skipped, rounds, downtime, and the pages the
image lost — the race shown with ``--unsafe --churn``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pagehint.cli.options import out_help, run_folder
from pagehint.cli.support import Subparsers, add_flag, convert, int_in, parse_ram
from pagehint.errors import UsageError
from pagehint.logging import log_as, setup
from pagehint.units import format_size, parse_size

if TYPE_CHECKING:  # lab.migrate loads gRPC: only when a run starts
    from lab.migrate import ModeRow


def add_parser(sub: Subparsers, env: Mapping[str, str]) -> None:
    p = sub.add_parser(
        "migrate",
        help="snapshot a guest by pre-copy with and without free page hints; check the image",
        description="Starts a host (shm) and a guest that fills --ram and frees --free of it "
        "(then idles, or churns with --churn), and snapshots it once per mode: no-hints, "
        "hints, and with --unsafe hints-unsafe (hinted pages never copied again, whatever "
        "the guest wrote since). After each the guest checks the image against its stamps.",
    )
    add_flag(p, env, "--ram", default="1GiB", help="the guest's RAM")
    add_flag(p, env, "--free", default="600MiB", help="what the guest frees before the snapshots")
    p.add_argument(
        "--churn",
        action="store_true",
        help="during the snapshots the guest takes back what it freed, 4 MiB a second",
    )
    p.add_argument("--unsafe", action="store_true", help="add the hints-unsafe mode (the race)")
    add_flag(p, env, "--max-rounds", default="0", help="pre-copy rounds at most (0: the host's 30)")
    add_flag(p, env, "--out", default=None, help=out_help("migrate-"))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def _size(value: object, flag: str) -> int:
    text = str(value).strip()
    if text.startswith("-"):
        raise UsageError(f"{flag} {text}: must not be negative")
    return convert(text, lambda s: parse_size(s, "size"), flag)


def run(a: argparse.Namespace, env: Mapping[str, str]) -> int:
    from lab.migrate import MigrateConfig, check, run_migrate

    modes = ("no-hints", "hints") + (("hints-unsafe",) if a.unsafe else ())
    cfg = MigrateConfig(
        ram_bytes=parse_ram(a.ram, "--ram"),
        free_bytes=_size(a.free, "--free"),
        modes=modes,
        churn=bool(a.churn),
        out=Path(),
        max_rounds=convert(a.max_rounds, int_in(0, 1000), "--max-rounds"),
    )
    check(cfg)
    # Absolute: the host names the guest's RAM file by it, and a guest believes
    # only plain absolute paths.
    cfg = dataclasses.replace(cfg, out=run_folder(a.out, "migrate-").resolve())
    setup(quiet=bool(a.json))
    log_as("migrate")
    result = run_migrate(cfg)
    if a.json:
        doc = {
            "ram_bytes": cfg.ram_bytes,
            "free_bytes": cfg.free_bytes,
            "churn": cfg.churn,
            "modes": {r["mode"]: {k: v for k, v in r.items() if k != "mode"} for r in result.rows},
            "guest_data_loss_pages": None
            if result.guest is None
            else result.guest.get("data_loss_pages"),
            "errors": result.errors,
        }
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        sys.stdout.write(_table(cfg.ram_bytes, cfg.free_bytes, cfg.churn, result.rows) + "\n")
        for e in result.errors:
            sys.stdout.write(f"error: {e}\n")
        sys.stdout.write(f"wrote {cfg.out}/summary.json\n")
    return 0 if not result.errors else 1


def _table(ram: int, free: int, churn: bool, rows: Sequence[ModeRow]) -> str:
    from lab.table import render_table

    head = (
        f"guest of {format_size(ram)} that freed {format_size(free)}"
        f"{', churning' if churn else ', idle'} during the snapshots"
    )
    header = ["mode", "pages copied", "skipped", "rounds", "downtime", "total", "lost"]
    body = [
        [
            str(r["mode"]),
            f"{r['pages_copied']:,}",
            f"{r['pages_skipped']:,}",
            str(r["rounds"]),
            f"{r['downtime_ms']} ms",
            f"{r['total_ms']} ms",
            str(r["data_loss_pages"]),
        ]
        for r in rows
    ]
    return head + "\n\n" + render_table(header, body)
