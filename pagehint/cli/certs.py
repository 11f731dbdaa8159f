"""``pagehint certs``: a CA and host/guest/admin certificates for mutual TLS demos."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from pagehint.cli.support import Subparsers, add_flag, convert, int_in
from pagehint.errors import UsageError

_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def add_parser(sub: Subparsers, env: Mapping[str, str]) -> None:
    p = sub.add_parser(
        "certs",
        help="create a CA and host, guest and admin certificates for mutual TLS",
        description="Write ca.crt, host.crt/key, guest-<ID>.crt/key for each --guests id and "
        "admin.crt/key into --out. A guest certificate's common name is the only guest id "
        "it may negotiate as; admin may read every guest's figures.",
    )
    add_flag(p, env, "--out", default="certs", help="folder to write into")
    add_flag(p, env, "--guests", default="guest", help="comma list of guest ids")
    add_flag(
        p,
        env,
        "--host-name",
        default="",
        help="extra names/IPs the host is reached by (comma list)",
    )
    add_flag(p, env, "--days", default="365", help="validity in days")
    p.set_defaults(handler=run)


def run(a: argparse.Namespace, env: Mapping[str, str]) -> int:
    from pagehint.certs import make_certs

    guests = list(dict.fromkeys(g.strip() for g in str(a.guests).split(",") if g.strip()))
    if not guests:
        raise UsageError("--guests: give at least one guest id")
    for g in guests:
        if not _ID.match(g):
            raise UsageError(f"--guests: {g!r} is not a usable id (letters, digits, _ . -)")
        if g == "admin":
            raise UsageError("--guests: 'admin' is the admin certificate's name, not a guest's")
    if (Path(str(a.out)) / "ca.crt").exists():
        raise UsageError(f"--out {a.out}: already holds a CA (ca.crt); choose another folder")
    names = [h.strip() for h in str(a.host_name).split(",") if h.strip()]
    days = convert(a.days, int_in(1, 36500), "--days")
    written = make_certs(Path(str(a.out)), guests, names, days)
    sys.stdout.write("".join(f"{p}\n" for p in written))
    return 0
