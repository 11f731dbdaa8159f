"""``pagehint guest``: run one guest (its allocator, workload and hinting policy)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from guest.hinting.plugin import check_policy_name
from guest.mm.constants import MAX_RAM
from guest.trace.load import load_plan
from guest.workloads.boot import format_orders, parse_orders
from guest.workloads.scenario import BUILTIN_DIR, load_scenario, resolve_scenario
from pagehint.cli.support import (
    Subparsers,
    add_flag,
    add_switch,
    add_verbosity,
    check_writable,
    choice,
    convert,
    default_of,
    parse_address,
    parse_ram,
    verbosity,
)
from pagehint.config import (
    BUILTIN_POLICIES,
    WORKLOADS,
    BootConfig,
    GuestConfig,
    HintingConfig,
    MemoryConfig,
    TraceConfig,
)
from pagehint.errors import UsageError
from pagehint.logging import setup
from pagehint.tls import TlsConfig, load_tls
from pagehint.units import exact_size, parse_seconds, parse_size

if TYPE_CHECKING:
    from pagehint.schema import GuestSummary


def shipped_scenarios() -> list[str]:
    """The names --scenario takes for the scenarios that ship (guest/workloads/scenarios/)."""
    return sorted(f.stem for f in BUILTIN_DIR.glob("*.toml"))


POLICY_HELP = (
    f"{' | '.join(BUILTIN_POLICIES)} (bitmap: the seed design, RFC v10; reporting: Linux's "
    "free page reporting), or your own: FILE.py:CLASS | MODULE:CLASS"
)
SCENARIO_HELP = "scenario TOML file, or a shipped one: " + ", ".join(shipped_scenarios())
DURATION_HELP = (
    "seconds to run (e.g. 30, 2m); with --trace an upper bound: the guest ends once the trace "
    "has ended and its policy has reported what it freed"
)


def add_parser(sub: Subparsers, env: Mapping[str, str]) -> None:
    p = sub.add_parser(
        "guest",
        help="run a guest: buddy allocator, workload, hinting worker, balloon driver",
        description="Run one guest. Without --host, reports go to an in-process loopback "
        "device (no host process); with --host they travel over gRPC to `pagehint host`.",
    )
    for group in (_what_to_run, _outputs, _hinting_knobs, _waits, _host_and_checks, _runs):
        group(p, env)
    p.set_defaults(handler=run)


def _what_to_run(p: argparse.ArgumentParser, e: Mapping[str, str]) -> None:
    """Flags: the guest, its workload (or scenario, or trace), how long."""
    add_flag(
        p,
        e,
        "--ram",
        default=None,
        help="guest RAM (64MiB..64GiB, multiple of 4MiB; default 1GiB, or what covers --trace)",
    )
    add_flag(
        p,
        e,
        "--id",
        default=default_of(GuestConfig, "guest_id"),
        dest="guest_id",
        help="guest name",
    )
    add_flag(p, e, "--host", default=None, help="host address HOST:PORT")
    add_flag(p, e, "--policy", default=default_of(HintingConfig, "policy"), help=POLICY_HELP)
    add_flag(p, e, "--workload", default=None, help=" | ".join(WORKLOADS))
    add_flag(p, e, "--scenario", default=None, help=SCENARIO_HELP)
    add_flag(
        p,
        e,
        "--trace",
        default=None,
        help="replay a kernel page allocator trace (ftrace text of kmem:mm_page_alloc/"
        "mm_page_free/mm_page_free_batched; .gz read as is)",
    )
    add_flag(
        p,
        e,
        "--speed",
        default=default_of(TraceConfig, "speed"),
        help="--trace: scale the trace's clock (2: twice as fast), or max (as fast as possible)",
    )
    add_flag(
        p,
        e,
        "--trace-map",
        default=default_of(TraceConfig, "mapping"),
        help="--trace: identity (guest pfn = trace pfn, zones kept) | compact (only the "
        "4 MiB blocks the trace touches)",
    )
    add_flag(
        p,
        e,
        "--trace-untouched",
        default=default_of(TraceConfig, "untouched"),
        help="--trace: the pages the trace never names start reported (as on a guest that "
        "has been up) | free (not yet reported, as just after boot) | allocated",
    )
    add_switch(p, e, "--trace-lenient", help="--trace: count malformed lines instead of stopping")
    add_flag(p, e, "--duration", default=None, help=DURATION_HELP)
    add_flag(
        p, e, "--seed", default=default_of(GuestConfig, "seed"), help="random seed for workloads"
    )
    _boot_flags(p, e)
    _memory_flags(p, e)


def _on_off(value: bool) -> str:
    return "on" if value else "off"


def _memory_flags(p: argparse.ArgumentParser, e: Mapping[str, str]) -> None:
    """Flags: which of the kernel allocator's rules run (defaults: MemoryConfig)."""
    for flag, field_name, text in (
        ("--pcp", "pcp", "per-CPU page lists: frees reach the buddy, and the hinting hook, "
         "when a list drains (off: at once, a departure)"),
        ("--thp", "thp", "transparent huge pages: khugepaged raises min_free_kbytes"),
        ("--alloc-watermarks", "watermarks", "allocations keep zones above their watermarks "
         "(off: zones drain to empty, a departure)"),
    ):  # fmt: skip
        add_flag(p, e, flag, default=default_of(MemoryConfig, field_name, _on_off),
                 help=f"on | off: {text}")  # fmt: skip
    add_flag(
        p, e, "--cpus", default=default_of(MemoryConfig, "cpus"),
        help="vCPUs: the zones' low watermark is split over them to size the per-CPU lists",
    )  # fmt: skip
    add_flag(
        p, e, "--boot-layout", default=default_of(MemoryConfig, "layout"),
        help="linux (reserved ranges and early boot's allocations, measured on a 6.1 "
        "guest) | none (all RAM free from pfn 0) | auto (linux from 1GiB)",
    )  # fmt: skip
    add_flag(
        p, e, "--min-free-kbytes", default=None,
        help="as /proc/sys/vm/min_free_kbytes (default: the kernel's, raised for THP)",
    )  # fmt: skip
    add_flag(
        p, e, "--kernel-at", default=default_of(MemoryConfig, "kernel_at", exact_size),
        help="where the kernel image was loaded (linux layout): 16MiB without KASLR; "
        "a real boot's is its /proc/iomem 'Kernel code' start, e.g. 1388MiB",
    )  # fmt: skip


def _memory_config(a: argparse.Namespace) -> MemoryConfig:
    def on_off(value: object, flag: str) -> bool:
        return choice(str(value), ("on", "off"), flag) == "on"

    return MemoryConfig(
        pcp=on_off(a.pcp, "--pcp"),
        thp=on_off(a.thp, "--thp"),
        watermarks=on_off(a.alloc_watermarks, "--alloc-watermarks"),
        cpus=convert(a.cpus, int, "--cpus"),
        layout=str(a.boot_layout),
        min_free_kbytes=None
        if a.min_free_kbytes is None
        else convert(a.min_free_kbytes, int, "--min-free-kbytes"),
        kernel_at=parse_size(str(a.kernel_at), "--kernel-at"),
    )


def _boot_flags(p: argparse.ArgumentParser, e: Mapping[str, str]) -> None:
    """Flags: the boot footprint (guest/workloads/boot.py; defaults: BootConfig)."""
    add_flag(
        p,
        e,
        "--boot-footprint",
        default=default_of(BootConfig, "size_bytes", exact_size),
        help="memory the guest's boot holds for the whole run, allocated before the workload "
        "(0: none, as before; `pagehint density` gives 233MiB, measured: README)",
    )
    add_flag(
        p,
        e,
        "--boot-orders",
        default=default_of(BootConfig, "orders", format_orders),
        help="--boot-footprint's blocks: ORDER:PERCENT of its bytes, comma-separated "
        "(measured: README)",
    )
    add_flag(
        p,
        e,
        "--boot-holes",
        default=default_of(BootConfig, "holes"),
        help="--boot-footprint: free space left between its blocks, per byte held (measured: "
        "README)",
    )


def _outputs(p: argparse.ArgumentParser, e: Mapping[str, str]) -> None:
    """Flags: what the run writes, and its event loop."""
    add_switch(p, e, "--json", help="print one JSON summary at the end")
    add_flag(
        p,
        e,
        "--timeline",
        default=None,
        help="write JSON lines: every 100 ms, at every mark and every acknowledged report",
    )
    add_flag(
        p,
        e,
        "--reports",
        default=None,
        help="write one JSON line per chain: send/answer times, ranges, status, host residency",
    )
    add_flag(
        p, e, "--loop", default=default_of(GuestConfig, "loop"), help="auto | uvloop | asyncio"
    )


def _hinting_knobs(p: argparse.ArgumentParser, e: Mapping[str, str]) -> None:
    """Flags: the hinting policy's knobs."""
    add_flag(
        p,
        e,
        "--hinting-order",
        "--reporting-order",
        default=default_of(HintingConfig, "order"),
        dest="order",
        help="smallest order reported (default 9 = 2 MiB)",
    )
    add_flag(
        p, e, "--capacity", default=None, help="blocks per report (default 16 bitmap, 32 reporting)"
    )
    add_flag(
        p,
        e,
        "--threshold",
        default=None,
        help="bitmap: new bits in a zone that wake the worker (default: the capacity, as v10)",
    )
    add_flag(
        p,
        e,
        "--delay",
        default=default_of(HintingConfig, "delay"),
        help="reporting: delay before a pass",
    )
    add_flag(
        p,
        e,
        "--timer-hz",
        default=default_of(HintingConfig, "timer_hz"),
        help="reporting: the guest kernel's HZ (100, 250, 300, 1000); the pass runs when "
        "its timer wheel fires, up to 32 ms after --delay at 250 (Debian's 6.1); "
        "0: exactly at --delay",
    )
    add_flag(
        p,
        e,
        "--flush-after",
        default=default_of(HintingConfig, "bitmap_flush_after"),
        help="bitmap departure: walk a zone whose bits waited this long below --threshold "
        "(0: never, as v10)",
    )
    add_switch(
        p,
        e,
        "--retry-failed",
        help="bitmap departure: hint a failed report's chunks again after a backoff "
        "(v10 drops them)",
    )
    add_switch(
        p,
        e,
        "--cross-zone-batches",
        help="bitmap departure: walk every zone with new bits, one batch across zones "
        "(v10 walks only zones at the threshold, a batch per zone)",
    )


def _host_and_checks(p: argparse.ArgumentParser, e: Mapping[str, str]) -> None:
    """Flags: metrics, the host connection and its identity, checks."""
    add_flag(p, e, "--metrics-port", default=None, help="serve Prometheus metrics on this port")
    add_flag(
        p,
        e,
        "--metrics-addr",
        default=default_of(GuestConfig, "metrics_addr"),
        help="address the metrics listen on (loopback; 0.0.0.0 exposes them to every address)",
    )
    add_flag(p, e, "--tls-cert", default=None, help="mutual TLS: this guest's certificate (PEM)")
    add_flag(p, e, "--tls-key", default=None, help="mutual TLS: its private key (PEM)")
    add_flag(p, e, "--tls-ca", default=None, help="mutual TLS: the CA that signs the host (PEM)")
    add_flag(p, e, "--token", default=None, help="without TLS: this guest's token (host --tokens)")
    add_flag(
        p,
        e,
        "--shm-dir",
        default=default_of(GuestConfig, "shm_dir"),
        help="shm backend: the only folder whose RAM files this guest opens; give the "
        "host's --shm-dir (default /dev/shm, where a host keeps them without one)",
    )
    add_flag(
        p,
        e,
        "--queue-socket",
        default=None,
        help="carry the reporting stream on the host's --queue-socket (a Unix socket on "
        "this machine) instead of gRPC; negotiation still goes to --host",
    )
    add_flag(p, e, "--poison", default=None, help="offer PAGE_POISON with this byte value (0-255)")
    add_switch(
        p,
        e,
        "--unsafe-skip-isolation",
        help="UNSAFE demonstration: report blocks without isolating them",
    )
    add_verbosity(p, e)


def expand_id(text: str) -> str:
    """``{hostname}`` and ``{pid}`` in --id: unique names for scaled services."""
    import os
    import socket

    try:
        out = text.format(hostname=socket.gethostname(), pid=os.getpid())
    except (KeyError, IndexError, ValueError):
        raise UsageError(f"--id {text!r}: only {{hostname}} and {{pid}} may be used") from None
    return out  # its length and characters: GuestConfig


def config_from_args(a: argparse.Namespace) -> GuestConfig:
    policy = check_policy_name(str(a.policy))
    ram, workload, scenario, trace, duration = _workload_config(a)
    hinting = _hinting_config(a, policy)
    poison = None if a.poison is None else convert(a.poison, lambda s: int(s, 0), "--poison")
    metrics_port = (
        None if a.metrics_port is None else convert(a.metrics_port, int, "--metrics-port")
    )
    from pagehint.metrics import check_listen_addr  # here: prometheus_client is slow to import

    check_listen_addr(str(a.metrics_addr))  # a port or not: 1.2.3.4 never passes unseen
    host, tls = _connection(a)
    return GuestConfig(
        ram_bytes=ram,
        guest_id=expand_id(str(a.guest_id)),
        host=host,
        workload=workload,
        rate=convert(a.rate, float, "--rate"),
        scenario=scenario,
        duration=duration,
        seed=convert(a.seed, int, "--seed"),
        json=bool(a.json),
        timeline=a.timeline,
        loop=str(a.loop),
        metrics_port=metrics_port,
        poison=poison,
        connect_timeout=convert(a.connect_timeout, parse_seconds, "--connect-timeout"),
        check=bool(a.check),
        ack_log=a.ack_log,
        stall_warning=convert(a.stall_warning, parse_seconds, "--stall-warning"),
        start_delay=convert(a.start_delay, parse_seconds, "--start-delay"),
        metrics_addr=str(a.metrics_addr),
        tls=tls,
        token=None if a.token is None else str(a.token),
        reports=None if a.reports is None else str(a.reports),
        shm_dir=str(a.shm_dir),
        queue_socket=None if a.queue_socket is None else str(a.queue_socket),
        hinting=hinting,
        trace=trace,
        boot=_boot_config(a),
        memory=_memory_config(a),
    )


def _boot_config(a: argparse.Namespace) -> BootConfig:
    return BootConfig(
        size_bytes=convert(a.boot_footprint, lambda s: parse_size(s, "size"), "--boot-footprint"),
        orders=parse_orders(str(a.boot_orders)),
        holes=convert(a.boot_holes, float, "--boot-holes"),
    )


def _workload_config(
    a: argparse.Namespace,
) -> tuple[int, str | None, str | None, TraceConfig | None, float | None]:
    """RAM, and one of a workload, a scenario or a trace, and for how long."""
    if sum(x is not None for x in (a.workload, a.scenario, a.trace)) > 1:
        # Before any file is read (GuestConfig checks it too, for other callers).
        raise UsageError("give one of --workload, --scenario and --trace")
    trace = _trace_config(a)
    if a.ram is not None:
        ram = parse_ram(a.ram)
    elif trace is not None:
        ram = _trace_ram(trace)
    else:
        ram = GuestConfig.ram_bytes
    workload = None if a.workload is None else str(a.workload)
    scenario = None
    if a.scenario is not None:
        scenario = resolve_scenario(str(a.scenario))
        load_scenario(scenario, ram)  # fail now, with the file and step named (and RAM)
    duration = None if a.duration is None else convert(a.duration, parse_seconds, "--duration")
    return ram, workload, scenario, trace, duration


def _hinting_config(a: argparse.Namespace, policy: str) -> HintingConfig:
    return HintingConfig(
        policy=policy,
        order=convert(a.order, int, "--hinting-order"),
        capacity=None if a.capacity is None else convert(a.capacity, int, "--capacity"),
        threshold=None if a.threshold is None else convert(a.threshold, int, "--threshold"),
        delay=convert(a.delay, parse_seconds, "--delay"),
        timer_hz=convert(a.timer_hz, int, "--timer-hz"),
        stop_grace=convert(a.stop_grace, parse_seconds, "--stop-grace"),
        bitmap_flush_after=convert(a.flush_after, parse_seconds, "--flush-after"),
        bitmap_retry=bool(a.retry_failed),
        bitmap_cross_zone=bool(a.cross_zone_batches),
        unsafe_skip_isolation=bool(a.unsafe_skip_isolation),
    )


def _connection(a: argparse.Namespace) -> tuple[str | None, TlsConfig | None]:
    """The host address, the files written, and the identity: checked together."""
    host = None if a.host is None else parse_address(str(a.host), "--host")
    for flag, path in (
        ("--timeline", a.timeline),
        ("--ack-log", a.ack_log),
        ("--reports", a.reports),
    ):
        if path is not None:
            check_writable(str(path), flag)
    if a.token is not None and any((a.tls_cert, a.tls_key, a.tls_ca)):
        # At once, before any file is read (GuestConfig checks it too): a host takes
        # one or the other, and the wrong one fails only at the handshake.
        raise UsageError("give mutual TLS (--tls-*) or --token, not both")
    return host, load_tls(a.tls_cert, a.tls_key, a.tls_ca)


def _write_summary(cfg: GuestConfig, summary: GuestSummary) -> None:
    if cfg.json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        from guest.report import format_summary

        sys.stdout.write(format_summary(summary) + "\n")


def _trace_config(a: argparse.Namespace) -> TraceConfig | None:
    if a.trace is None:
        for flag, value, default in (
            ("--speed", a.speed, "1"),
            ("--trace-map", a.trace_map, "identity"),
            ("--trace-untouched", a.trace_untouched, "reported"),
        ):
            if str(value) != default:
                raise UsageError(f"{flag} is for --trace: give --trace FILE too")
        return None
    speed = None if str(a.speed) == "max" else convert(a.speed, float, "--speed")
    cfg = TraceConfig(
        path=str(a.trace),
        speed=speed,
        mapping=str(a.trace_map),
        lenient=bool(a.trace_lenient),
        untouched=str(a.trace_untouched),
    )
    check_trace_speed(cfg)  # loads it: fails now, naming the file and line
    return cfg


def check_trace_speed(cfg: TraceConfig) -> None:
    """A trace replayed at a speed needs a clock in seconds to scale."""
    plan = load_plan(cfg)
    if cfg.speed is not None and not plan.trace.seconds_clock:
        raise UsageError(
            f"--trace {cfg.path}: its timestamps are not seconds (a counter or TSC trace "
            f"clock): give --speed max"
        )


def _trace_ram(trace: TraceConfig) -> int:
    """The RAM that covers the trace's pfns (once mapped)."""
    plan = load_plan(trace)
    if plan.ram_bytes > MAX_RAM:
        hint = (
            "use --trace-map compact"
            if plan.mapping == "identity"
            else "even packed, its 4 MiB blocks are too many for one guest"
        )
        raise UsageError(
            f"--trace {trace.path}: its pfns reach {plan.ram_bytes >> 30} GiB, above the "
            f"64 GiB a guest can have; {hint}"
        )
    return plan.ram_bytes


def run(a: argparse.Namespace, env: Mapping[str, str]) -> int:
    cfg = config_from_args(a)
    if cfg.workload is None and cfg.scenario is None and cfg.trace is None and cfg.duration is None:
        raise UsageError("nothing to run: give --workload, --scenario, --trace or --duration")
    from guest.balloon.connection import OomKilled
    from guest.service import run_guest

    setup(*verbosity(a))
    try:
        summary = run_guest(cfg)
    except OomKilled as e:
        # The host's OOM killer ended this guest: its summary, then one line, exit 3.
        if e.summary is None:
            raise
        _write_summary(cfg, e.summary)
        sys.stderr.write(f"pagehint guest: {e}\n")
        return e.exit_status
    _write_summary(cfg, summary)
    if summary["policy_errors"]:
        sys.stderr.write(
            f"pagehint guest: policy {cfg.hinting.policy} broke the rules: "
            f"{summary['policy_errors'][0]}"
            + (
                f" (and {len(summary['policy_errors']) - 1} more)"
                if len(summary["policy_errors"]) > 1
                else ""
            )
            + "\n"
        )
        return 1
    return 0


def _waits(p: argparse.ArgumentParser, e: Mapping[str, str]) -> None:
    """Flags: how long the driver waits for a host that does not answer."""
    add_flag(
        p,
        e,
        "--stall-warning",
        default=default_of(GuestConfig, "stall_warning"),
        help="log a report the host has not answered for this long (it stays out until answered)",
    )
    add_flag(
        p,
        e,
        "--stop-grace",
        default=default_of(HintingConfig, "stop_grace"),
        help="stopping, wait this long for a report in flight (then leave its blocks isolated)",
    )


def _runs(p: argparse.ArgumentParser, e: Mapping[str, str]) -> None:
    """Flags: the run's pace and start, and its checks."""
    add_flag(
        p,
        e,
        "--rate",
        default=default_of(GuestConfig, "rate"),
        help="churn: allocator operations per second",
    )
    add_flag(
        p,
        e,
        "--ack-log",
        default=None,
        help="write each report's ack latency (ms) to this file at the end",
    )
    add_flag(
        p,
        e,
        "--connect-timeout",
        default=default_of(GuestConfig, "connect_timeout"),
        help="seconds to wait for the host at start-up",
    )
    add_switch(
        p,
        e,
        "--check",
        help="check the allocator's invariants at the end (summary field 'invariants')",
    )
    add_flag(
        p,
        e,
        "--start-delay",
        default=default_of(GuestConfig, "start_delay"),
        help="wait this long before booting (loadtest --ramp spreads guests' starts with it)",
    )
