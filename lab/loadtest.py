"""`pagehint loadtest`: many guests against one overcommitted host."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NotRequired, TypedDict

import grpc

from guest.mm.constants import PAGE_SIZE
from guest.workloads.builtin import WorkloadParams
from lab.pipeline import write_report
from lab.plot import plot_files, plot_series
from lab.procs import ProcessGroup, cpu_seconds
from pagehint.errors import UsageError
from pagehint.schema import GuestSummary, Percentiles, ResidentPoint
from pagehint.stats import percentiles
from pagehint.units import format_size
from virtqueue import codec

log = logging.getLogger(__name__)

# The workloads a load test gives its guests in turn (pagehint.config.WORKLOADS
# names every built-in one).
ROTATION = ("memhog", "churn", "fragment")
POLL = 0.5  # seconds between host-stats samples


@dataclass(frozen=True)
class LoadtestConfig:
    guests: int
    ram_bytes: int
    duration: float
    capacity_bytes: int
    backend: str
    policies: tuple[str, ...]
    rate: float
    out: Path
    guests_per_process: int = 1
    # Guests' starts are spread evenly over this many seconds (0: all at once).
    ramp: float = 0.0
    # ("--host-memory", N, "--swap", M): the host's own memory instead of a hard
    # --memory-limit of capacity_bytes (then N); () for the limit.
    host_memory_args: tuple[str, ...] = ()
    # Streams on the host's --queue-socket instead of gRPC (negotiation stays on gRPC).
    queue_socket: bool = False


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise UsageError("cannot read MemAvailable from /proc/meminfo")


class HostSample(TypedDict):
    """The host's figures, every POLL seconds (a ResidentPoint, so it plots)."""

    t: float
    host_resident_bytes: int | None
    guests: int  # guests with a session
    chains: int
    mark: NotRequired[str]
    swap_used_bytes: NotRequired[int]  # with --host-memory


class LoadtestReport(TypedDict):
    """`pagehint loadtest --json`, and summary.json."""

    guests: int
    guests_completed: int
    # Guests whose workload got through its allocation (finished_allocating): the
    # only ones overcommit_ratio counts.
    guests_finished_allocating: int
    guest_processes: int
    guest_ram_total_bytes: int
    host_capacity_bytes: int
    host_resident_peak_bytes: int
    host_resident_end_bytes: int  # the last sample with every guest connected
    # RAM of the guests that finished allocating / the most the host held for
    # those same guests at once (None: no guest finished allocating)
    overcommit_ratio: float | None
    finished_resident_peak_bytes: int  # that most
    capacity_overcommit_ratio: float  # guest RAM / host capacity
    elapsed_s: float
    chains: int
    chains_per_s: float
    ack_latency_ms: Percentiles
    alloc_failures: int
    report_failures: int
    data_loss_pages: int
    data_loss_checked: bool  # every guest had real RAM to check (shm backend)
    refused_chains: int | None
    host_cpu_s: float | None
    host_cpu_share: float | None  # of one core, over the run
    errors: list[str]
    backend: str
    transport: str  # the guests' streams: "grpc", or "queue socket" (--queue-socket)
    ramp_s: float
    per_guest: dict[str, GuestSummary]
    host_timeline: list[HostSample]
    host_memory: HostMemoryFigures | None  # with --host-memory (None: a hard limit)
    files: NotRequired[dict[str, str]]


@dataclass
class _Observed:
    """What a load test saw while it ran."""

    host_rows: list[HostSample] = field(default_factory=list)
    # Per host sample: what the host held for each guest (guest id -> bytes).
    guest_resident: list[dict[str, int]] = field(default_factory=list)
    summaries: dict[str, GuestSummary] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    host_stats: codec.HostFigures | None = None
    host_cpu: float | None = None
    elapsed: float = 0.0


def run_loadtest(cfg: LoadtestConfig) -> LoadtestReport:
    cfg.out.mkdir(parents=True, exist_ok=True)
    group = ProcessGroup(cfg.out)
    names = [f"lt-{i + 1:03d}" for i in range(cfg.guests)]
    seen = _Observed()
    t0 = time.monotonic()
    # A folder of its own under the temp dir: --out may be longer than a socket's path.
    sock_dir = tempfile.mkdtemp(prefix="pagehint-q-") if cfg.queue_socket else None
    sock = None if sock_dir is None else os.path.join(sock_dir, "queue.sock")
    try:
        addr, host = group.start_host(_host_flags(cfg, sock))
        # Guests share processes (`pagehint guest-group`): one event loop each, so
        # hundreds of guests are a few processes, not hundreds fighting for cores.
        flags = _guest_flags(cfg, addr, names)
        if sock is not None:
            flags = [[*f, "--queue-socket", sock] for f in flags]
        per = cfg.guests_per_process
        procs = {
            f"lt-group-{k // per + 1:03d}": group.start_guest_group(
                flags[k : k + per], f"lt-group-{k // per + 1:03d}"
            )
            for k in range(0, len(flags), per)
        }
        what = "host memory" if cfg.host_memory_args else "capacity"
        log.info(
            f"host on {addr} ({what} {format_size(cfg.capacity_bytes)}); "
            f"{cfg.guests} guests started in {len(procs)} process(es)"
        )
        _watch_host(addr, procs, seen, t0)
        for n, p in procs.items():
            done, failed = group.group_summaries(p, n, timeout=60)
            seen.summaries.update(done)
            seen.errors.extend(failed)
        if host.poll() is not None:
            seen.errors.append(f"host exited with {host.returncode}")
        seen.host_cpu = cpu_seconds(host.pid)
        seen.elapsed = time.monotonic() - t0
    finally:
        group.close()
        if sock_dir is not None:
            shutil.rmtree(sock_dir, ignore_errors=True)
    if "Traceback" in group.log_text("host"):  # a host bug, if it served every guest
        seen.errors.append(f"the host logged an internal error ({cfg.out / 'host.log'})")
    report = _report(cfg, names, seen)
    cap_rows: list[ResidentPoint] = [
        {"t": r["t"], "host_resident_bytes": cfg.capacity_bytes} for r in seen.host_rows
    ]
    plot = plot_series(
        {"host resident (all guests)": seen.host_rows, "host capacity": cap_rows},
        cfg.out / "loadtest.png",
        title=f"loadtest: {cfg.guests} guests × {format_size(cfg.ram_bytes)} "
        f"({format_size(cfg.guests * cfg.ram_bytes)} promised)",
    )
    report["files"] = plot_files(cfg.out, None, plot)
    write_report(cfg.out, report)
    return report


def _host_flags(cfg: LoadtestConfig, sock: str | None) -> list[str]:
    flags = ["--backend", cfg.backend, "--quiet", "--session-timeout", "120"]
    if sock is not None:
        flags += ["--queue-socket", sock]
    flags += cfg.host_memory_args or ["--memory-limit", str(cfg.capacity_bytes)]
    # Every guest of a load test comes from this one address: the host's per-address
    # quota (a quarter of its sessions by default) must not be what refuses them.
    return [*flags, "--max-sessions-per-peer", str(max(1, cfg.guests))]


def _guest_flags(cfg: LoadtestConfig, addr: str, names: list[str]) -> list[list[str]]:
    """Each guest's flags: workloads and policies in turn, starts spread over the ramp."""
    flags = []
    for i, n in enumerate(names):
        f = ["--host", addr, "--id", n, "--ram", str(cfg.ram_bytes)]
        f += ["--workload", ROTATION[i % len(ROTATION)]]
        f += ["--policy", cfg.policies[i % len(cfg.policies)]]
        f += ["--duration", str(cfg.duration), "--seed", str(i), "--rate", str(cfg.rate)]
        f += ["--connect-timeout", "120", "--ack-log", str(cfg.out / f"{n}.acks"), "--quiet"]
        f += ["--start-delay", f"{cfg.ramp * i / cfg.guests:.3f}"]
        flags.append(f)
    return flags


def _watch_host(
    addr: str,
    procs: dict[str, subprocess.Popen[str]],
    seen: _Observed,
    t0: float,
) -> None:
    """Sample the host's figures every POLL seconds until every guest process ends."""
    with grpc.insecure_channel(addr) as ch:
        stub = codec.stub(ch)
        last_print = 0.0
        while any(p.poll() is None for p in procs.values()):
            try:
                seen.host_stats = codec.decode_host_stats(
                    stub.Stats(codec.encode_stats_request(), timeout=5)
                )
                h = seen.host_stats
                # With the host's own memory each guest's VMM holds memory too (the
                # model's books count it; the guests' frames alone understate the host).
                vmm = h.vmm_overhead_bytes * len(h.guests) if h.host_memory_bytes else 0
                row: HostSample = {
                    "t": round(time.monotonic() - t0, 2),
                    "host_resident_bytes": (h.resident_bytes or 0) + vmm,
                    "guests": len(seen.host_stats.guests),
                    "chains": seen.host_stats.chains,
                }
                if seen.host_stats.host_memory_bytes:
                    row["swap_used_bytes"] = seen.host_stats.swap_used_bytes
                seen.host_rows.append(row)
                seen.guest_resident.append(
                    {g.guest_id: g.resident_bytes for g in seen.host_stats.guests}
                )
            except grpc.RpcError as e:
                seen.errors.append(f"host stats: {e.code().name}")
            if time.monotonic() - last_print > 5 and seen.host_rows:
                last_print = time.monotonic()
                r = seen.host_rows[-1]
                log.info(
                    f"[{r['t']:5.1f}s] {r['guests']} guests connected, host holds "
                    f"{format_size(r['host_resident_bytes'] or 0)}, {r['chains']} chains"
                )
            time.sleep(POLL)


# How close to its target occupancy churn must come to count as having allocated:
# it approaches the target exponentially and then wanders around it by about 1%.
CHURN_REACHED = 0.95


def finished_allocating(
    workload: str, s: GuestSummary, params: WorkloadParams | None = None
) -> bool:
    """Whether a loadtest guest's workload got through its allocation in the run.

    A guest that did not (it booted late, or its share of a busy loop was too
    small) holds less than its workload would, and counting its RAM as served
    would flatter the overcommit figure. memhog: its first hog (half its RAM) was
    allocated (it reached a ``free-`` mark, or the run ended while it held the
    hog); fragment: it made every page allocation of its half (it allocates once);
    churn: it reached 95% of its target occupancy. Allocation *failures* are
    counted separately (alloc_failures), not here.
    """
    p = params or WorkloadParams()
    ram = s["ram_bytes"]
    if workload == "memhog":
        hog = int(ram * p.hog_fraction)
        freed = any(m["label"].startswith("free-") for m in s["marks"])
        return freed or s["allocated_bytes"] >= hog
    if workload == "fragment":
        return s["alloc_ops"] >= -(-int(ram * p.hog_fraction) // PAGE_SIZE)
    if workload == "churn":
        return s["allocated_bytes"] >= CHURN_REACHED * int(ram * p.occupancy)
    return False


def _finished(names: list[str], summaries: dict[str, GuestSummary]) -> set[str]:
    """The guests that got through their allocation and were not OOM-killed (the
    host took back what it had served those)."""
    return {
        n
        for i, n in enumerate(names)
        if n in summaries
        and not summaries[n].get("oom_killed")
        and finished_allocating(ROTATION[i % len(ROTATION)], summaries[n])
    }


def _report(cfg: LoadtestConfig, names: list[str], seen: _Observed) -> LoadtestReport:
    acks: list[float] = []
    for n in names:
        path = cfg.out / f"{n}.acks"
        if path.exists():
            acks.extend(float(x) for x in path.read_text().split())
    summaries, host_rows = seen.summaries, seen.host_rows
    chains = sum(s["chains"] for s in summaries.values())
    total_ram = cfg.guests * cfg.ram_bytes
    peak = max((v for r in host_rows if (v := r["host_resident_bytes"]) is not None), default=0)
    # "End": the last sample with every guest still connected (after that, guests
    # finishing close their sessions and the host lets their memory go).
    most = max((r["guests"] for r in host_rows), default=0)
    full = [r for r in host_rows if r["guests"] == most]
    # Overcommit counts only the guests that finished allocating: their RAM, over
    # the most the host held for them at once (a guest still allocating when the
    # run ended was promised RAM it never asked the host for).
    finished = _finished(names, summaries)
    finished_ram = sum(summaries[n]["ram_bytes"] for n in finished)
    finished_peak = max(
        (sum(v for g, v in per.items() if g in finished) for per in seen.guest_resident),
        default=0,
    )
    cpu = seen.host_cpu
    return {
        "guests": cfg.guests,
        "guests_completed": len(summaries),
        "guests_finished_allocating": len(finished),
        "guest_processes": -(-cfg.guests // cfg.guests_per_process),
        "guest_ram_total_bytes": total_ram,
        "host_capacity_bytes": cfg.capacity_bytes,
        "host_resident_peak_bytes": peak,
        "host_resident_end_bytes": (full[-1]["host_resident_bytes"] or 0) if full else 0,
        "overcommit_ratio": round(finished_ram / finished_peak, 2) if finished_peak else None,
        "finished_resident_peak_bytes": finished_peak,
        "capacity_overcommit_ratio": round(total_ram / cfg.capacity_bytes, 2),
        "elapsed_s": round(seen.elapsed, 1),
        "chains": chains,
        "chains_per_s": round(chains / cfg.duration, 1),
        "ack_latency_ms": percentiles(acks),
        "alloc_failures": sum(s["alloc_failures"] for s in summaries.values()),
        "report_failures": sum(s["report_failures"] for s in summaries.values()),
        "data_loss_pages": sum(s["data_loss_pages"] for s in summaries.values()),
        # Only the shm backend has real memory whose loss the guests can detect.
        "data_loss_checked": bool(summaries)
        and all(s["data_loss_checked"] for s in summaries.values()),
        "refused_chains": seen.host_stats.refused_chains if seen.host_stats else None,
        # The host's CPU over the whole run, and as a share of one core.
        "host_cpu_s": None if cpu is None else round(cpu, 2),
        "host_cpu_share": None if cpu is None else round(cpu / seen.elapsed, 3),
        "errors": seen.errors,
        "backend": cfg.backend,
        "transport": "queue socket" if cfg.queue_socket else "grpc",
        "ramp_s": cfg.ramp,
        "per_guest": summaries,
        "host_timeline": host_rows,
        "host_memory": _host_memory(seen),
    }


class HostMemoryFigures(TypedDict):
    """With --host-memory: what the host's own memory did over the run."""

    host_memory_bytes: int
    swap_bytes: int
    swap_used_peak_bytes: int
    swap_used_end_bytes: int
    swap_ins: int  # pages read back (major faults), host-wide
    swap_outs: int  # pages written out
    oom_kills: int
    oom_killed: list[str]  # the guests it ended
    major_faults: int  # summed over the guests' summaries
    fault_wait_s: float  # what the guests' workloads waited for them, summed


def _host_memory(seen: _Observed) -> HostMemoryFigures | None:
    h = seen.host_stats
    if h is None or not h.host_memory_bytes:
        return None
    sums = seen.summaries.values()
    return {
        "host_memory_bytes": h.host_memory_bytes,
        "swap_bytes": h.swap_bytes,
        "swap_used_peak_bytes": max(
            (r.get("swap_used_bytes", 0) for r in seen.host_rows), default=0
        ),
        "swap_used_end_bytes": h.swap_used_bytes,
        "swap_ins": h.swap_ins,
        "swap_outs": h.swap_outs,
        "oom_kills": h.oom_kills,
        "oom_killed": sorted(s["guest_id"] for s in sums if s.get("oom_killed")),
        "major_faults": sum(s.get("major_faults", 0) for s in sums),
        "fault_wait_s": round(sum(s.get("fault_wait_seconds", 0.0) for s in sums), 3),
    }


def _overcommit_line(r: LoadtestReport) -> str:
    done = f"{r['guests_finished_allocating']}/{r['guests']} guests finished allocating"
    if r["overcommit_ratio"] is None:
        return f"n/a ({done})"
    return f"{r['overcommit_ratio']}× ({done}; their RAM / the host's peak for them)"


def _host_memory_rows(
    rows: list[tuple[str, str]], hm: HostMemoryFigures, overcommit: float
) -> None:
    """With --host-memory: the capacity row says so, and a row for the swap."""
    rows[2] = (
        "host memory",
        f"{format_size(hm['host_memory_bytes'])} + {format_size(hm['swap_bytes'])} swap "
        f"(overcommit {overcommit}×)",
    )
    killed = ", ".join(hm["oom_killed"]) or "none"
    rows.insert(
        4,
        (
            "host swap",
            f"peak {format_size(hm['swap_used_peak_bytes'])}, end "
            f"{format_size(hm['swap_used_end_bytes'])}; {hm['swap_ins']:,} pages in, "
            f"{hm['swap_outs']:,} out; guests took {hm['major_faults']:,} major faults "
            f"and waited {hm['fault_wait_s']:.1f} s; OOM kills {hm['oom_kills']} ({killed})",
        ),
    )


def _killed_note(r: LoadtestReport) -> str:
    hm = r.get("host_memory")
    killed = len(hm["oom_killed"]) if hm is not None else 0
    return f", {killed} of them killed by the host's OOM killer" if killed else ""


def format_loadtest(r: LoadtestReport) -> str:
    lat = r["ack_latency_ms"]
    cpu, share = r["host_cpu_s"], r["host_cpu_share"]

    def ms(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f} ms"

    rows = [
        (
            "guests",
            f"{r['guests_completed']}/{r['guests']} completed in {r['guest_processes']} "
            f"process(es) ({r['backend']} backend, streams on "
            f"{'gRPC' if r['transport'] == 'grpc' else r['transport']})" + _killed_note(r),
        ),
        ("guest RAM total", format_size(r["guest_ram_total_bytes"])),
        (
            "host capacity",
            f"{format_size(r['host_capacity_bytes'])} "
            f"(overcommit {r['capacity_overcommit_ratio']}×)",
        ),
        (
            "host resident",
            f"peak {format_size(r['host_resident_peak_bytes'])}, "
            f"end {format_size(r['host_resident_end_bytes'])}",
        ),
        ("overcommit achieved", _overcommit_line(r)),
        ("chains", f"{r['chains']} ({r['chains_per_s']}/s)"),
        ("ack latency", f"p50 {ms(lat['p50'])}, p99 {ms(lat['p99'])}, max {ms(lat['max'])}"),
        (
            "host CPU",
            "n/a" if cpu is None or share is None else f"{cpu} s ({share * 100:.0f}% of one core)",
        ),
        ("alloc failures", str(r["alloc_failures"])),
        ("report failures", str(r["report_failures"])),
        (
            "data loss",
            f"{r['data_loss_pages']} pages"
            if r["data_loss_checked"]
            else "not measured (sim backend has no real memory; use --backend shm)",
        ),
        ("errors", "none" if not r["errors"] else "; ".join(r["errors"][:5])),
    ]
    hm = r.get("host_memory")
    if hm is not None:
        _host_memory_rows(rows, hm, r["capacity_overcommit_ratio"])
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)
