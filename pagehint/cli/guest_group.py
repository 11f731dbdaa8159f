"""`pagehint guest-group FILE`: many guests in one process, on one event loop.

Each line of FILE holds the flags of one `pagehint guest` (blank lines and
lines starting with # are skipped). Every guest keeps its own allocator,
policy, session and stream; they share the process's event loop, which is how
a load test runs hundreds of guests on a small machine instead of hundreds of
processes fighting for its cores. Each guest's flags are checked before any
starts; a guest that fails at run time is reported, the others go on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from pagehint.cli.support import RaisingParser, Subparsers, add_switch, add_verbosity, verbosity
from pagehint.config import GuestConfig
from pagehint.errors import UsageError
from pagehint.files import read_small_text
from pagehint.logging import setup
from pagehint.schema import GuestSummary

MAX_GUESTS = 1024
MAX_FILE_BYTES = 1 << 20
MAX_LINE_CHARS = 16 * 1024  # argparse is quadratic in a line's words


def add_parser(sub: Subparsers, env: Mapping[str, str]) -> None:
    p = sub.add_parser(
        "guest-group",
        help="run many guests in one process (one `pagehint guest` per line of FILE)",
        description="Run several guests on one event loop. FILE has one guest per line: the "
        "flags of `pagehint guest` (e.g. --host 127.0.0.1:50051 --id a --workload churn "
        "--duration 30). # starts a comment line.",
    )
    p.add_argument("file", help="file with one guest's flags per line")
    add_switch(p, env, "--json", help="print one JSON summary line per guest")
    add_verbosity(p, env)
    p.set_defaults(handler=run)


def read_group(path: Path, env: Mapping[str, str]) -> list[GuestConfig]:
    """Each line's flags parsed and checked exactly as `pagehint guest` does."""
    from pagehint.cli.guest import config_from_args

    text = read_small_text(str(path), "guest list", MAX_FILE_BYTES)
    parser = _guest_parser(env)
    configs: list[GuestConfig] = []
    seen: dict[str, int] = {}
    taken: dict[tuple[str, str], int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if len(configs) >= MAX_GUESTS:
            raise UsageError(f"{path}: more than {MAX_GUESTS} guests")
        if len(line) > MAX_LINE_CHARS:
            raise UsageError(f"{path} line {n}: longer than {MAX_LINE_CHARS} characters")
        if "\x00" in line:
            raise UsageError(f"{path} line {n}: contains a NUL character")
        try:
            words = shlex.split(line)
        except ValueError as e:
            raise UsageError(f"{path} line {n}: {e}") from None
        if {"-h", "--help"} & set(words):
            raise UsageError(f"{path} line {n}: --help is not a guest to run")
        args = _parse_line(parser, words, f"{path} line {n}")
        try:
            cfg = config_from_args(args)
        except UsageError as e:
            raise UsageError(f"{path} line {n}: {e}") from None
        if cfg.workload is None and cfg.scenario is None and cfg.duration is None:
            raise UsageError(
                f"{path} line {n}: nothing to run: give --workload, --scenario or --duration"
            )
        if cfg.guest_id in seen:
            raise UsageError(
                f"{path} line {n}: guest id {cfg.guest_id!r} is already used on line "
                f"{seen[cfg.guest_id]} (a host takes one session per id)"
            )
        seen[cfg.guest_id] = n
        for what, key in _exclusive(cfg):
            if key in taken:
                raise UsageError(
                    f"{path} line {n}: {what} is already used on line {taken[key]} "
                    "(each guest needs its own)"
                )
            taken[key] = n
        configs.append(cfg)
    if not configs:
        raise UsageError(f"{path}: no guests (one line of `pagehint guest` flags per guest)")
    return configs


def _exclusive(cfg: GuestConfig) -> list[tuple[str, tuple[str, str]]]:
    """What two guests of one group cannot share: output files, a metrics port."""
    out = []
    for flag, value in (
        ("--timeline", cfg.timeline),
        ("--reports", cfg.reports),
        ("--ack-log", cfg.ack_log),
    ):
        if value is not None:
            out.append((f"{flag} {value}", ("file", os.path.realpath(value))))
    if cfg.metrics_port:  # 0: any free port, never shared
        where = f"{cfg.metrics_addr}:{cfg.metrics_port}"
        out.append((f"--metrics-port {cfg.metrics_port}", ("port", where)))
    return out


def _guest_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """`pagehint` with only its guest subcommand, raising UsageError on a bad flag."""
    from pagehint.cli import guest as guest_command

    root = RaisingParser(prog="pagehint")
    sub = root.add_subparsers(dest="command", parser_class=RaisingParser)
    guest_command.add_parser(sub, env)
    return root


def _parse_line(
    parser: argparse.ArgumentParser, words: list[str], where: str
) -> argparse.Namespace:
    """Parse one line as `pagehint guest WORDS`; a bad flag is a UsageError naming the line."""
    try:
        return parser.parse_args(["guest", *words])
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None
    except SystemExit:  # --help and the like
        raise UsageError(f"{where}: not a guest's flags") from None


async def run_group(
    configs: list[GuestConfig],
) -> list[GuestSummary | BaseException]:
    from guest.service import StopSignals, serve_guest
    from guest.workloads import share

    # Many guests, one loop: workloads take turns within a budget so that every
    # guest's driver and worker stay responsive (guest/workloads/share.py).
    share.shared = share.LoopShare() if len(configs) > 1 else None
    # One signal handler for all, in place before any guest boots: a guest still
    # waiting to start or connecting is stopped too.
    signals = StopSignals()
    signals.install()
    try:
        results = await asyncio.gather(
            *(serve_guest(cfg, signals) for cfg in configs),
            return_exceptions=True,
        )
    finally:
        share.shared = None
    return list(results)


def run(a: argparse.Namespace, env: Mapping[str, str]) -> int:
    from pagehint import heap
    from pagehint import loop as event_loop

    configs = read_group(Path(a.file), env)
    loops = {cfg.loop for cfg in configs}
    if len(loops) > 1:
        raise UsageError(
            f"{a.file}: guests ask for different --loop values; one process has one loop"
        )
    setup(*verbosity(a))
    with heap.settling():  # each guest's boot state out of the collector's walks
        results = event_loop.run(run_group(configs), loops.pop())
    from guest.balloon.connection import OomKilled

    failed = killed = 0
    for cfg, result in zip(configs, results, strict=True):
        if isinstance(result, OomKilled) and result.summary is not None:
            # As `pagehint guest`: its summary, then one line; the others go on.
            killed += 1
            _write(a, cfg.guest_id, result.summary)
            sys.stderr.write(f"pagehint guest-group: guest {cfg.guest_id}: {result}\n")
        elif isinstance(result, UsageError):
            failed += 1
            sys.stderr.write(f"pagehint guest-group: guest {cfg.guest_id}: error: {result}\n")
        elif isinstance(result, BaseException):
            failed += 1
            sys.stderr.write(
                f"pagehint guest-group: guest {cfg.guest_id}: internal error: "
                f"{type(result).__name__}: {result}\n"
            )
        else:
            _write(a, cfg.guest_id, result)
    if failed:
        return 2
    return OomKilled.exit_status if killed else 0


def _write(a: argparse.Namespace, guest_id: str, summary: GuestSummary) -> None:
    if a.json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        from guest.report import format_summary

        sys.stdout.write(f"== guest {guest_id}\n{format_summary(summary)}\n")
