"""The ``pagehint`` command: subcommands for guest, host, and the lab tools.

This package is the roof of the house: every command's flags (argparse) live
here, one module per command, and nothing below imports it. A command turns
its flags into the wing's config dataclass (``GuestConfig``, ``HostConfig``,
``DensityConfig``, ...) and calls the wing's entry point (``run_guest``,
``HostServer``, ``run_density``, ...). ``support`` holds what the commands
share (flags that read ``PAGEHINT_*``, value converters); ``options`` the lab
commands' shared flags and run folders.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping, Sequence

from pagehint import __version__
from pagehint.cli.support import Parser
from pagehint.errors import UsageError


def build_parser(env: Mapping[str, str]) -> Parser:
    from pagehint.cli import balloon as balloon_command
    from pagehint.cli import certs as certs_command
    from pagehint.cli import compare as compare_command
    from pagehint.cli import controllers as controllers_command
    from pagehint.cli import demo as demo_command
    from pagehint.cli import density as density_command
    from pagehint.cli import guest as guest_command
    from pagehint.cli import guest_group as group_command
    from pagehint.cli import health as health_command
    from pagehint.cli import hint as hint_command
    from pagehint.cli import host as host_command
    from pagehint.cli import loadtest as loadtest_command
    from pagehint.cli import migrate as migrate_command
    from pagehint.cli import sweep as sweep_command

    parser = Parser(
        prog="pagehint",
        description="Free page hinting emulator: a guest buddy allocator reports free memory "
        "to a host over a gRPC virtqueue. Every flag can also be set with a PAGEHINT_<FLAG> "
        "environment variable (e.g. PAGEHINT_RAM=2GiB).",
        epilog="Policies: bitmap (the seed design), reporting (Linux's), none, or your own "
        "(FILE.py:CLASS | MODULE:CLASS; docs/policies.md). Shipped scenarios: "
        f"{', '.join(guest_command.shipped_scenarios())}. `pagehint COMMAND --help` lists a "
        "command's flags and their defaults.",
    )
    parser.add_argument("--version", action="version", version=f"pagehint {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in (
        demo_command,
        guest_command,
        group_command,
        host_command,
        compare_command,
        loadtest_command,
        sweep_command,
        density_command,
        controllers_command,
        balloon_command,
        hint_command,
        migrate_command,
        health_command,
        certs_command,
    ):
        module.add_parser(sub, env)
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = dict(os.environ) if env is None else env
    try:
        parser = build_parser(env)
    except UsageError as e:  # a bad PAGEHINT_* switch: flags take defaults from env
        sys.stderr.write(f"pagehint: error: {e}\n")
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    # SIGTERM takes the same clean way out as Ctrl-C: lab commands stop their child
    # processes and remove what they made. (host and guest install their own handlers.)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        rc: int = args.handler(args, env)
        return rc
    except UsageError as e:
        sys.stderr.write(f"pagehint {args.command}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"pagehint {args.command}: interrupted\n")
        return 130


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def entry() -> None:
    # gRPC's C core reads its log level once, when it starts: before any import of
    # grpc. Without this a host logs a line for every failed TLS handshake (any
    # port scanner can flood it) and a bad flag comes with core's own error lines
    # before ours; every failure pagehint sees is reported in its own one line.
    # A user's setting wins (GRPC_VERBOSITY=ERROR or DEBUG to look inside).
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    raise SystemExit(main())


if __name__ == "__main__":
    entry()
