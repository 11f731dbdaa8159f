"""``pagehint hint``: free page hinting from outside — start a run, stop it, read
its status — as Firecracker's /balloon/hinting/{start,stop,status}."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping

from pagehint.cli.admin import add_host_flags, call_host
from pagehint.cli.support import Subparsers
from pagehint.errors import UsageError
from pagehint.units import format_size

ACTIONS = ("start", "stop", "status")


def add_parser(sub: Subparsers, env: Mapping[str, str]) -> None:
    p = sub.add_parser(
        "hint",
        help="free page hinting: start a run, stop it (DONE), or show host_cmd and guest_cmd",
        description="start: the host asks the guest for its free blocks under a new "
        "command id (the guest holds them until DONE; the host discards them); stop: DONE, "
        "the guest may use them again; status: the host's and the guest's last command ids. "
        "Needs a host with --free-page-hint, and its admin identity where it checks them.",
    )
    p.add_argument("action", help="start | stop | status")
    add_host_flags(p, env)
    p.add_argument(
        "--no-ack-on-stop",
        action="store_true",
        help="start: do not answer the guest's STOP with DONE (Firecracker's "
        "acknowledge_on_stop false); `hint stop` then says DONE",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def run(a: argparse.Namespace, env: Mapping[str, str]) -> int:
    from virtqueue import codec

    action = str(a.action)
    if action not in ACTIONS:
        raise UsageError(f"unknown action {action!r} (choose from {', '.join(ACTIONS)})")
    if not a.guest:
        raise UsageError("give --guest ID")
    request = codec.encode_hint_request(
        str(a.guest), codec.HINT_ACTIONS[action], not a.no_ack_on_stop
    )
    reply = call_host(
        a, lambda stub, timeout, metadata: stub.Hint(request, timeout=timeout, metadata=metadata)
    )
    h = codec.decode_hint_status(reply)
    guest_cmd = h.guest_cmd if h.has_guest_cmd else None
    if a.json:
        out = {
            "guest_id": h.guest_id,
            "host_cmd": h.host_cmd,
            "guest_cmd": guest_cmd,
            "hinted_bytes": h.hinted_pages * 4096,
            "runs": h.runs,
        }
        sys.stdout.write(json.dumps(out) + "\n")
        return 0
    names = {0: "STOP", 1: "DONE"}
    shown = "none yet" if guest_cmd is None else names.get(guest_cmd, str(guest_cmd))
    sys.stdout.write(
        f"guest {h.guest_id}: host_cmd {names.get(h.host_cmd, str(h.host_cmd))}, "
        f"guest_cmd {shown}; {format_size(h.hinted_pages * 4096)} hinted in this run "
        f"({h.runs} runs)\n"
    )
    return 0
