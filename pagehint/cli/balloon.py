"""``pagehint balloon``: set a guest's balloon target, or read its balloon, from
outside — as Firecracker's ``PATCH /balloon`` and ``GET /balloon/statistics``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping

from pagehint.cli.admin import add_host_flags, call_host
from pagehint.cli.support import Subparsers, add_flag, convert
from pagehint.errors import UsageError
from pagehint.units import format_size, parse_size


def add_parser(sub: Subparsers, env: Mapping[str, str]) -> None:
    p = sub.add_parser(
        "balloon",
        help="set a guest's balloon target, or show its balloon (target, actual, stats)",
        description="With --target, the host tells the guest to inflate or deflate its "
        "balloon to that size (the guest's pages go to the host); without, shows the "
        "guest's balloon. Needs the host's admin identity where it checks identities.",
    )
    add_host_flags(p, env)
    add_flag(p, env, "--target", default=None, help="balloon size to reach (e.g. 512MiB, 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def run(a: argparse.Namespace, env: Mapping[str, str]) -> int:
    from virtqueue import codec

    if not a.guest:
        raise UsageError("give --guest ID")
    target = None if a.target is None else convert(a.target, parse_size, "--target")
    reply = call_host(
        a,
        lambda stub, timeout, metadata: stub.Balloon(
            codec.encode_balloon_request(str(a.guest), target),
            timeout=timeout,
            metadata=metadata,
        ),
    )
    b = codec.decode_balloon_status(reply)
    if a.json:
        out = {
            "guest_id": b.guest_id,
            "balloon": b.balloon,
            "target_bytes": b.target_bytes,
            "actual_bytes": b.actual_bytes,
            "stats": b.stats,
            "stats_age_ms": b.stats_age_ms,
            "inflated_pages": b.inflated_pages,
            "deflated_pages": b.deflated_pages,
        }
        sys.stdout.write(json.dumps(out) + "\n")
        return 0
    if not b.balloon:
        sys.stdout.write(f"guest {b.guest_id}: its session has no balloon (an older guest)\n")
        return 0
    lines = [
        f"guest {b.guest_id}: balloon target {format_size(b.target_bytes)}, "
        f"actual {format_size(b.actual_bytes)}",
    ]
    if b.stats:
        age = f" ({b.stats_age_ms / 1000:.1f} s ago)" if b.stats_age_ms else ""
        lines.append(f"stats{age}:")
        for name, value in sorted(b.stats.items()):
            shown = format_size(value) if name.endswith("memory") else f"{value:,}"
            lines.append(f"  {name:18} {shown}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
