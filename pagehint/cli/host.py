"""``pagehint host``: the hypervisor side, serving any number of guests."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from host.limits import (
    default_calls_per_peer,
    default_max_connections,
    default_max_sessions,
    default_sessions_per_peer,
    raise_nofile,
)
from pagehint import loop as event_loop
from pagehint.cli.support import (
    Subparsers,
    add_flag,
    add_switch,
    add_verbosity,
    check_writable,
    convert,
    default_of,
    parse_address,
    verbosity,
    warn_old_names,
)
from pagehint.config import HostConfig
from pagehint.errors import UsageError
from pagehint.files import read_small_text
from pagehint.logging import log_as, setup
from pagehint.tls import load_tls
from pagehint.units import exact_size, parse_seconds, parse_size


def add_parser(sub: Subparsers, env: Mapping[str, str]) -> None:
    p = sub.add_parser(
        "host",
        help="run the host: balloon device and memory backend for many guests",
        description="Serve the virtqueue over gRPC: guests negotiate, report free page "
        "ranges, and the host discards them and acknowledges.",
    )
    for group in (_serving, _host_memory, _identity_and_outputs, _faults):
        group(p, env)
    p.set_defaults(handler=run)


def _serving(p: argparse.ArgumentParser, e: Mapping[str, str]) -> None:
    """Flags: where and how the host serves, and what it holds."""
    add_flag(
        p, e, "--listen", default=default_of(HostConfig, "listen"), help="HOST:PORT (port 0: any)"
    )
    add_flag(p, e, "--backend", default=default_of(HostConfig, "backend"), help="sim | shm")
    add_flag(
        p,
        e,
        "--discard",
        default=default_of(HostConfig, "discard"),
        help="free (MADV_FREE: lazy) | dontneed (MADV_DONTNEED / punch hole: at once)",
    )
    add_flag(
        p,
        e,
        "--memory-limit",
        old=("--capacity",),
        default=None,
        dest="memory_limit",
        help="host memory for all guests (e.g. 8GiB); lazily freed memory is reclaimed first; "
        "its variable is PAGEHINT_MEMORY_LIMIT (PAGEHINT_CAPACITY is the guest's --capacity)",
    )
    add_flag(
        p,
        e,
        "--queue-size",
        default=default_of(HostConfig, "queue_size"),
        help="chains outstanding per guest (1..32768)",
    )
    add_flag(
        p,
        e,
        "--max-chain-ranges",
        default=default_of(HostConfig, "max_chain_ranges"),
        help="most ranges in one chain (1..4096)",
    )
    add_flag(
        p,
        e,
        "--session-timeout",
        default=default_of(HostConfig, "session_timeout"),
        help="end a session that made no call for this long (guests call several times a second)",
    )
    add_flag(
        p,
        e,
        "--max-sessions",
        default=None,
        help="most sessions at once (default: what the descriptor limit leaves room for, "
        "at most 1024)",
    )
    _client_limits(p, e)
    _balloon_flags(p, e)


def _host_memory(p: argparse.ArgumentParser, e: Mapping[str, str]) -> None:
    """Flags: the host's own memory model (host/memory/hostmem.py; off by default).
    Sources for the defaults: pagehint/config.py HostConfig."""
    add_flag(
        p,
        e,
        "--host-memory",
        default=None,
        help="the host's memory for guests and their VMMs (e.g. 15GiB): past it the coldest "
        "2 MiB chunks are swapped, and with swap full the OOM killer ends the largest guest "
        "(default: unlimited, no model; not with --memory-limit)",
    )
    add_flag(
        p,
        e,
        "--swap",
        default=default_of(HostConfig, "swap_bytes", exact_size),
        help="--host-memory: the host's swap",
    )
    add_flag(
        p,
        e,
        "--swap-in-cost",
        default=default_of(HostConfig, "swap_in_cost"),
        help="--host-memory: seconds a guest waits per 4 KiB page read back from swap "
        "(Intel DC P4500 random read)",
    )
    add_flag(
        p,
        e,
        "--swap-out-cost",
        default=default_of(HostConfig, "swap_out_cost"),
        help="--host-memory: seconds per 4 KiB page written to swap, waited by the guest "
        "whose fault forced it (Intel DC P4500 random write)",
    )
    add_flag(
        p,
        e,
        "--vmm-overhead",
        default=default_of(HostConfig, "vmm_overhead_bytes", exact_size),
        help="--host-memory: each guest's VMM, resident from its negotiation, never swapped "
        "(QEMU's, measured by smem)",
    )
    add_flag(
        p,
        e,
        "--swap-dir",
        default=None,
        help="--backend shm with --swap: the folder for the host's swap file (default: a "
        "private folder under /var/tmp, removed at stop)",
    )


def _client_limits(p: argparse.ArgumentParser, e: Mapping[str, str]) -> None:
    """Flags: what one client may hold, so that no client locks the others out."""
    add_flag(
        p,
        e,
        "--max-sessions-per-peer",
        default=None,
        help="most sessions one client address may hold (default: a quarter of "
        "--max-sessions, at least 16)",
    )
    add_flag(
        p,
        e,
        "--max-calls-per-peer",
        default=None,
        help="most calls one client address may have open at once, across its "
        "connections (default: twice --max-sessions-per-peer, plus 16)",
    )
    add_flag(
        p,
        e,
        "--max-connections",
        default=None,
        help="most connections at once, past it new ones are closed at once (default: what "
        "the descriptor limit leaves room for beside the sessions, at most 4096); with "
        "--queue-socket, half of them are the socket's",
    )
    add_flag(
        p,
        e,
        "--handshake-timeout",
        default=default_of(HostConfig, "handshake_timeout"),
        help="close a connection that has not started HTTP/2 (and TLS), or on the queue "
        "socket said its session, this long after connecting (default %(default)s s)",
    )
    add_flag(
        p,
        e,
        "--idle-connection-timeout",
        default=default_of(HostConfig, "idle_connection_timeout"),
        help="close a connection with no call open for this long (default %(default)s s; "
        "guests always have one)",
    )
    add_flag(
        p,
        e,
        "--auth-penalty-max",
        default=default_of(HostConfig, "auth_penalty_max"),
        help="--tokens: a wrong token keeps its client address from having another checked "
        "for 0.1 s, doubling per failure up to this (default %(default)s s; 0: off)",
    )


def _balloon_flags(p: argparse.ArgumentParser, e: Mapping[str, str]) -> None:
    """Flags: the rest of the balloon (inflate/deflate, stats, deflate-on-oom)."""
    add_flag(
        p,
        e,
        "--stats-interval",
        default=default_of(HostConfig, "stats_interval"),
        help="balloon: how often each guest sends its stats (default %(default)s s; 0: never)",
    )
    add_switch(
        p,
        e,
        "--deflate-on-oom",
        help="balloon: offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM (a guest out of memory takes "
        "pages back from its balloon first; off by default, as in QEMU and Firecracker)",
    )
    add_switch(
        p,
        e,
        "--free-page-hint",
        help="balloon: offer VIRTIO_BALLOON_F_FREE_PAGE_HINT (`pagehint hint` starts a run; "
        "snapshots skip hinted pages; off by default, as in QEMU and Firecracker)",
    )
    add_flag(
        p,
        e,
        "--controller",
        default=None,
        help="balloon: set every guest's target from the host's memory: mom (oVirt MOM's "
        "rules), proxmox (Proxmox VE's auto-ballooning), pressure (senpai's PSI rule), or "
        "MODULE:CLASS / FILE.py:CLASS of your own (needs --host-memory; default: none)",
    )
    add_flag(
        p,
        e,
        "--balloon-min",
        default=default_of(HostConfig, "balloon_min_bytes", exact_size),
        help="balloon: the least memory a controller should leave each guest (oVirt's "
        "guaranteed memory, Proxmox's minimum memory; default 0: not set)",
    )


def _identity_and_outputs(p: argparse.ArgumentParser, e: Mapping[str, str]) -> None:
    """Flags: who may call, what the host writes, its loop and metrics."""
    add_flag(p, e, "--tls-cert", default=None, help="mutual TLS: the host's certificate (PEM)")
    add_flag(p, e, "--tls-key", default=None, help="mutual TLS: its private key (PEM)")
    add_flag(p, e, "--tls-ca", default=None, help="mutual TLS: the CA that signs guests (PEM)")
    add_flag(
        p,
        e,
        "--tokens",
        default=None,
        help="without TLS: a file of 'GUEST_ID TOKEN' lines; guests must present theirs",
    )
    add_flag(
        p,
        e,
        "--chain-log",
        default=None,
        help="write one JSON line per chain: wall time, guest, chain, status, resident bytes",
    )
    add_flag(
        p,
        e,
        "--metrics-addr",
        default=default_of(HostConfig, "metrics_addr"),
        help="address the metrics listen on (loopback; 0.0.0.0 exposes them to every address)",
    )
    add_flag(p, e, "--shm-dir", default=None, help="shm backend: where RAM files live")
    add_flag(
        p,
        e,
        "--queue-socket",
        default=None,
        help="also serve reporting streams on this Unix socket, for guests on this machine "
        "(guest --queue-socket): round trips without gRPC's cost",
    )
    add_flag(p, e, "--loop", default=default_of(HostConfig, "loop"), help="auto | uvloop | asyncio")
    add_flag(p, e, "--metrics-port", default=None, help="Prometheus metrics port")
    add_flag(p, e, "--ready-file", default=None, help="write the bound address here once serving")


def _faults(p: argparse.ArgumentParser, e: Mapping[str, str]) -> None:
    """Flags: latency and fault injection (tests and demos), and the log."""
    add_flag(
        p,
        e,
        "--latency",
        default=default_of(HostConfig, "latency"),
        help="seconds before each chain is processed (models a busy host)",
    )
    add_flag(
        p,
        e,
        "--min-order",
        default=default_of(HostConfig, "min_order"),
        help="smallest order the device takes in a range (0: the guest's reporting order)",
    )
    add_flag(
        p,
        e,
        "--inject-refuse",
        default=default_of(HostConfig, "inject_refuse"),
        help="fault injection: refuse this fraction of chains (0..1)",
    )
    add_flag(
        p,
        e,
        "--inject-discard-error",
        default=default_of(HostConfig, "inject_discard_error"),
        help="fault injection: fail this fraction of discards with EIO (0..1)",
    )
    add_flag(
        p,
        e,
        "--fault-seed",
        default=default_of(HostConfig, "fault_seed"),
        help="random seed of the fault injection",
    )
    add_verbosity(p, e)


def config_from_args(a: argparse.Namespace) -> HostConfig:
    listen = parse_address(str(a.listen), "--listen", allow_port_zero=True)
    capacity = None if a.memory_limit is None else convert(a.memory_limit, _size, "--memory-limit")
    port = a.metrics_port
    metrics_port = None if port is None else convert(port, int, "--metrics-port")
    from pagehint.metrics import check_listen_addr  # here: prometheus_client is slow to import

    check_listen_addr(str(a.metrics_addr))  # a port or not: 1.2.3.4 never passes unseen
    if a.ready_file is not None:
        check_writable(str(a.ready_file), "--ready-file")
    if a.chain_log is not None:
        check_writable(str(a.chain_log), "--chain-log")
    if a.tokens is not None and any((a.tls_cert, a.tls_key, a.tls_ca)):
        # Before either is read (HostConfig checks it too, for other callers).
        raise UsageError("give mutual TLS (--tls-*) or --tokens, not both")
    max_sessions = default_max_sessions()
    if a.max_sessions is not None:
        max_sessions = convert(a.max_sessions, int, "--max-sessions")
    per_peer = default_sessions_per_peer(max_sessions)
    if a.max_sessions_per_peer is not None:
        per_peer = convert(a.max_sessions_per_peer, int, "--max-sessions-per-peer")
    calls_per_peer = default_calls_per_peer(per_peer)
    if a.max_calls_per_peer is not None:
        calls_per_peer = convert(a.max_calls_per_peer, int, "--max-calls-per-peer")
    max_connections = default_max_connections(max_sessions, str(a.backend))
    if a.max_connections is not None:
        max_connections = convert(a.max_connections, int, "--max-connections")
    return HostConfig(
        **_host_memory_fields(a),
        listen=listen,
        backend=str(a.backend),
        discard=str(a.discard),
        capacity_bytes=capacity,
        queue_size=convert(a.queue_size, int, "--queue-size"),
        max_chain_ranges=convert(a.max_chain_ranges, int, "--max-chain-ranges"),
        session_timeout=convert(a.session_timeout, parse_seconds, "--session-timeout"),
        shm_dir=a.shm_dir,
        loop=str(a.loop),
        metrics_port=metrics_port,
        latency=convert(a.latency, parse_seconds, "--latency"),
        min_order=convert(a.min_order, int, "--min-order"),
        inject_refuse=convert(a.inject_refuse, float, "--inject-refuse"),
        inject_discard_error=convert(a.inject_discard_error, float, "--inject-discard-error"),
        fault_seed=convert(a.fault_seed, int, "--fault-seed"),
        metrics_addr=str(a.metrics_addr),
        tls=load_tls(a.tls_cert, a.tls_key, a.tls_ca, role="server"),
        tokens=load_tokens(a.tokens) if a.tokens is not None else {},
        max_sessions=max_sessions,
        max_sessions_per_peer=per_peer,
        max_calls_per_peer=calls_per_peer,
        max_connections=max_connections,
        handshake_timeout=convert(a.handshake_timeout, parse_seconds, "--handshake-timeout"),
        idle_connection_timeout=convert(
            a.idle_connection_timeout, parse_seconds, "--idle-connection-timeout"
        ),
        auth_penalty_max=convert(a.auth_penalty_max, parse_seconds, "--auth-penalty-max"),
        **_balloon_fields(a),
        chain_log=None if a.chain_log is None else str(a.chain_log),
        queue_socket=None if a.queue_socket is None else str(a.queue_socket),
    )


def _host_memory_fields(a: argparse.Namespace) -> dict[str, Any]:
    """HostConfig's host memory model fields from the flags."""
    host_memory = None
    if a.host_memory is not None:
        host_memory = convert(a.host_memory, _size, "--host-memory")
    return {
        "host_memory_bytes": host_memory,
        "swap_bytes": convert(a.swap, _size, "--swap"),
        "swap_in_cost": convert(a.swap_in_cost, _cost, "--swap-in-cost"),
        "swap_out_cost": convert(a.swap_out_cost, _cost, "--swap-out-cost"),
        "vmm_overhead_bytes": convert(a.vmm_overhead, _size, "--vmm-overhead"),
        "swap_dir": a.swap_dir,
    }


def _balloon_fields(a: argparse.Namespace) -> dict[str, Any]:
    """HostConfig's balloon fields from the flags (issue 24)."""
    return {
        "stats_interval": convert(a.stats_interval, parse_seconds, "--stats-interval"),
        "deflate_on_oom": bool(a.deflate_on_oom),
        "free_page_hint": bool(a.free_page_hint),
        "controller": _controller(a.controller),
        "balloon_min_bytes": convert(a.balloon_min, _size, "--balloon-min"),
    }


def _controller(spec: object) -> str | None:
    """The --controller value, its class loaded (a plug-in that does not load is one
    line here, before the host starts)."""
    if spec is None:
        return None
    from host.control.runner import controller_class

    controller_class(str(spec))
    return str(spec)


def _size(text: str) -> int:
    return parse_size(text, "size")


def _cost(text: str) -> float:
    """Seconds per page: a duration (0.085ms) or a plain number, which may be
    written with an exponent (85e-6)."""
    try:
        return parse_seconds(text, "cost")
    except UsageError:
        return float(text)  # ValueError: convert() says "bad value"


def load_tokens(path: str) -> dict[str, str]:
    """``GUEST_ID TOKEN`` per line (# comments); one line naming the problem otherwise."""
    text = read_small_text(path, "--tokens")
    tokens: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):  # comments are whole lines: a token may hold '#'
            continue
        parts = line.split()
        if len(parts) != 2 or not 16 <= len(parts[1]) <= 256 or not parts[1].isascii():
            raise UsageError(
                f"--tokens {path}:{n}: expected 'GUEST_ID TOKEN', the token 16+ ASCII characters"
            )
        if parts[0] in tokens:
            raise UsageError(f"--tokens {path}:{n}: guest {parts[0]!r} given twice")
        if parts[1] in tokens.values():
            raise UsageError(f"--tokens {path}:{n}: a token shared by two guests")
        tokens[parts[0]] = parts[1]
    if not tokens:
        raise UsageError(f"--tokens {path}: no tokens in the file")
    return tokens


def run(a: argparse.Namespace, env: Mapping[str, str]) -> int:
    # Before the defaults are derived from it: servers commonly raise the soft
    # descriptor limit to the hard one (limits.py says why it matters here).
    raise_nofile()
    cfg = config_from_args(a)
    warn_old_names(a, "pagehint host")
    from host.server import serve

    setup(*verbosity(a))
    log_as("host")
    return event_loop.run(serve(cfg, a.ready_file), cfg.loop)
