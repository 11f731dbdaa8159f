"""``pagehint host``: the hypervisor side, serving any number of guests."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from pagehint import loop as event_loop
from pagehint.cli_support import (
    add_flag,
    add_switch,
    choice,
    convert,
    nonneg_float,
    positive_float,
    positive_int,
)
from pagehint.config import LOOPS, HostConfig
from pagehint.errors import UsageError
from pagehint.logging import make_logger
from pagehint.units import parse_seconds, parse_size

BACKENDS = ("sim", "shm")
DISCARDS = ("free", "dontneed")


def add_parser(sub: Any, env: Mapping[str, str]) -> None:
    p = sub.add_parser(
        "host",
        help="run the host: balloon device and memory backend for many guests",
        description="Serve the virtqueue over gRPC: guests negotiate, report free page "
        "ranges, and the host discards them and acknowledges.",
    )
    e = env
    add_flag(p, e, "--listen", default="127.0.0.1:50051", help="HOST:PORT (port 0: any)")
    add_flag(p, e, "--backend", default="sim", help="sim | shm")
    add_flag(
        p,
        e,
        "--discard",
        default="dontneed",
        help="free (MADV_FREE: lazy) | dontneed (MADV_DONTNEED / punch hole: at once)",
    )
    add_flag(
        p,
        e,
        "--capacity",
        default=None,
        help="host memory for all guests (e.g. 8GiB); lazily freed memory is reclaimed first",
    )
    add_flag(p, e, "--queue-size", default="64", help="chains outstanding per guest")
    add_flag(p, e, "--max-chain-ranges", default="512", help="most ranges in one chain")
    add_flag(
        p,
        e,
        "--session-timeout",
        default="30",
        help="end a session idle this long with no stream open",
    )
    add_flag(p, e, "--shm-dir", default=None, help="shm backend: where RAM files live")
    add_flag(p, e, "--loop", default="auto", help="auto | uvloop | asyncio")
    add_flag(p, e, "--metrics-port", default=None, help="Prometheus metrics port")
    add_flag(p, e, "--ready-file", default=None, help="write the bound address here once serving")
    add_flag(
        p,
        e,
        "--latency",
        default="0",
        help="seconds before each chain is processed (models a busy host)",
    )
    add_flag(
        p,
        e,
        "--min-order",
        default="0",
        help="smallest order the device takes in a range (0: the guest's reporting order)",
    )
    add_flag(
        p,
        e,
        "--inject-refuse",
        default="0",
        help="fault injection: refuse this fraction of chains (0..1)",
    )
    add_flag(
        p,
        e,
        "--inject-discard-error",
        default="0",
        help="fault injection: fail this fraction of discards with EIO (0..1)",
    )
    add_flag(p, e, "--fault-seed", default="0", help="random seed of the fault injection")
    add_switch(p, e, "--quiet")
    p.set_defaults(handler=run)


def config_from_args(a: argparse.Namespace) -> HostConfig:
    listen = str(a.listen)
    if ":" not in listen:
        raise UsageError(f"--listen {listen!r}: expected HOST:PORT")
    port = listen.rsplit(":", 1)[1]
    if not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {listen!r}: bad port {port!r}")
    capacity = None
    if a.capacity is not None:
        capacity = convert(a.capacity, lambda s: parse_size(s, "capacity"), "--capacity")
        if capacity <= 0:
            raise UsageError("--capacity must be positive")
    metrics_port = None
    if a.metrics_port is not None:
        metrics_port = convert(a.metrics_port, int, "--metrics-port")
        if not 0 <= metrics_port <= 65535:
            raise UsageError(f"--metrics-port {a.metrics_port}: not a port number")
    return HostConfig(
        listen=listen,
        backend=choice(str(a.backend), BACKENDS, "--backend"),
        discard=choice(str(a.discard), DISCARDS, "--discard"),
        capacity_bytes=capacity,
        queue_size=convert(a.queue_size, positive_int, "--queue-size"),
        max_chain_ranges=convert(a.max_chain_ranges, positive_int, "--max-chain-ranges"),
        session_timeout=convert(
            a.session_timeout, lambda s: positive_float(str(parse_seconds(s))), "--session-timeout"
        ),
        shm_dir=a.shm_dir,
        loop=choice(str(a.loop), LOOPS, "--loop"),
        metrics_port=metrics_port,
        latency=convert(a.latency, lambda s: nonneg_float(str(parse_seconds(s))), "--latency"),
        min_order=_order(a.min_order, "--min-order"),
        inject_refuse=_fraction(a.inject_refuse, "--inject-refuse"),
        inject_discard_error=_fraction(a.inject_discard_error, "--inject-discard-error"),
        fault_seed=convert(a.fault_seed, int, "--fault-seed"),
    )


def _order(text: str, flag: str) -> int:
    order = convert(text, int, flag)
    if not 0 <= order <= 10:
        raise UsageError(f"{flag} {text}: must be 0..10")
    return order


def _fraction(text: str, flag: str) -> float:
    value = convert(text, float, flag)
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{flag} {text}: must be a fraction 0..1")
    return value


def run(a: argparse.Namespace, env: Mapping[str, str]) -> int:
    cfg = config_from_args(a)
    from host.server import serve

    log = make_logger("host", bool(a.quiet))
    return event_loop.run(serve(cfg, log, a.ready_file), cfg.loop)
