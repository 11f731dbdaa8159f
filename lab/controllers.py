"""`pagehint controllers`: balloon controllers and free page reporting side by side.

The same fleet and job once per run, each run against a fresh host whose memory
the fleet's RAM overcommits (1.5× by default). A run is a guest policy
(``reporting`` or ``none``) and a host controller (``mom``, ``proxmox``,
``pressure`` or none): reporting alone, each controller alone, each with
reporting, and neither (the baseline). Runs go at once, each its own host
process and one guest-group process: their phases are tens of seconds of the
controllers' own periods (5 s, 10 s, 1 s: their sources'), so running them one
after another would take eight times as long; the machine's load is reported.

The job (every guest): boot (the measured boot footprint), then four phases of
``phase`` seconds. Half the guests (A) are busy in phases 1 and 3, the other
half (B) in phase 2; a busy guest holds ``work`` bytes (80% of its RAM, as the
RFC v10 cover letter's launch test: "allocates 4GB memory" in a 5 GB guest) and
frees them at the phase's end; phase 4 is quiet for all. At most half the fleet
is busy at once, so a host that gets freed memory back holds the busy half; one
that does not fills with the freed memory of both halves and swaps or kills.

Per run: host memory × time (GiB·min of what the host holds for guests),
peak swap, OOM kills, the guests' allocation stalls and failures, the seconds
they waited on the host's swap, and the time to reclaim a set amount: from
the A guests' first free until the host holds for them half of what they freed
less than at that moment (none within phase 2: "–").
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from guest.workloads.boot import format_orders
from lab.density import StatsSource
from lab.procs import ProcessGroup, cpu_seconds
from pagehint.config import VMM_OVERHEAD, BootConfig
from pagehint.errors import UsageError
from pagehint.schema import GuestSummary
from pagehint.units import format_size
from virtqueue import codec

log = logging.getLogger(__name__)

CONTROLLERS = ("mom", "proxmox", "pressure")
POLICIES = ("reporting", "none")
# Every run by default: the baseline, reporting alone, each controller alone and
# with reporting.
DEFAULT_RUNS = (
    "none",
    "reporting",
    *CONTROLLERS,
    *(f"reporting+{c}" for c in CONTROLLERS),
)
# The RFC v10 cover letter's launch test (docs/plans/density-sources.md): a 5 GB
# guest "allocates 4GB memory": a busy guest holds this share of its RAM.
WORK_SHARE = 0.8
# The same letter's host: 15 GB of memory with 4 GB of swap.
SWAP_SHARE = 4 / 15
POLL = 0.5  # seconds between the lab's Stats calls (each run's)
STOP_SECONDS = 30.0  # at most, per run, to stop its processes when interrupted
PHASES = 4


@dataclass(frozen=True)
class Run:
    """One run: the guests' policy and the host's controller (None: none)."""

    policy: str
    controller: str | None

    @property
    def name(self) -> str:
        if self.controller is None:
            return self.policy
        return self.controller if self.policy == "none" else f"{self.policy}+{self.controller}"


def parse_runs(text: str) -> tuple[Run, ...]:
    """``none,reporting,mom,reporting+mom,...``: each a policy, a controller, or both."""
    runs: list[Run] = []
    for word in (w.strip() for w in text.split(",")):
        if not word:
            continue
        policy, _, controller = word.rpartition("+")
        if not policy:
            policy, controller = ("none", controller) if controller in CONTROLLERS else (word, "")
        if policy not in POLICIES or (controller and controller not in CONTROLLERS):
            raise UsageError(
                f"--runs: {word!r} is not a run (a policy: {', '.join(POLICIES)}; a controller: "
                f"{', '.join(CONTROLLERS)}; or reporting+CONTROLLER)"
            )
        run = Run(policy, controller or None)
        if run in runs:
            raise UsageError(f"--runs: {word!r} twice")
        runs.append(run)
    if not runs:
        raise UsageError("--runs: name at least one run")
    return tuple(runs)


@dataclass(frozen=True)
class ControllersConfig:
    """`pagehint controllers`' settings, checked (pagehint/cli/controllers.py)."""

    runs: tuple[Run, ...]
    guests: int
    guest_ram_bytes: int
    overcommit: float
    phase_s: float
    boot: BootConfig
    out: Path
    backend: str = "sim"
    vmm_overhead_bytes: int | None = None

    @property
    def host_memory_bytes(self) -> int:
        """The fleet's RAM over the overcommit ratio, on whole pages."""
        return int(self.guests * self.guest_ram_bytes / self.overcommit) & ~4095

    @property
    def swap_bytes(self) -> int:
        return int(self.host_memory_bytes * SWAP_SHARE) & ~4095

    @property
    def work_bytes(self) -> int:
        return int(self.guest_ram_bytes * WORK_SHARE) & ~4095

    @property
    def balloon_min_bytes(self) -> int:
        """Each guest's minimum (--balloon-min): its boot footprint, what an idle
        guest holds; a controller may take the rest."""
        return self.boot.size_bytes

    def check(self) -> None:
        vmm = VMM_OVERHEAD if self.vmm_overhead_bytes is None else self.vmm_overhead_bytes
        if self.guest_ram_bytes + vmm > self.host_memory_bytes + self.swap_bytes:
            raise UsageError(
                f"--guest-ram {format_size(self.guest_ram_bytes)} with a VMM of "
                f"{format_size(vmm)}: one guest is more than the host's memory and swap "
                f"({format_size(self.host_memory_bytes)} + {format_size(self.swap_bytes)})"
            )
        need = self.boot.span_bytes() + self.work_bytes
        if need > self.guest_ram_bytes:
            raise UsageError(
                f"--guest-ram {format_size(self.guest_ram_bytes)}: its boot "
                f"({format_size(self.boot.span_bytes())} with holes) and a busy phase's "
                f"{format_size(self.work_bytes)} ({WORK_SHARE:.0%} of it) do not fit"
            )


def scenario_text(busy: Sequence[int], work_bytes: int, phase_s: float) -> str:
    """The job of a guest busy in the phases ``busy`` (1-based). A busy phase
    allocates at its start, holds for half the phase and frees, so the last busy
    half has freed before the next allocates, however long allocating took. Marks
    name each step ("busy1", "free1", "quiet2", ...)."""
    half = f"seconds = {phase_s / 2:g}"
    steps: list[tuple[str, str]] = []
    for k in range(1, PHASES + 1):
        if k in busy:
            steps += [("mark", f'label = "busy{k}"')]
            steps += [("alloc", f'name = "work"\nsize = "{work_bytes}B"\norder = 0')]
            steps += [("sleep", half), ("mark", f'label = "free{k}"')]
            steps += [("free", 'name = "work"'), ("sleep", half)]
        else:
            steps += [("mark", f'label = "quiet{k}"'), ("sleep", f"seconds = {phase_s:g}")]
    steps += [("mark", 'label = "end"')]
    body = "\n\n".join(f'[[steps]]\nop = "{op}"\n{fields}' for op, fields in steps)
    return f'name = "controllers"\n\n{body}\n'


GROUP_A_BUSY = (1, 3)
GROUP_B_BUSY = (2,)


def group_of(i: int) -> str:
    return "A" if i % 2 == 0 else "B"


# ---- one run -----------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    resident_bytes: int
    swap_used_bytes: int
    oom_kills: int
    guests: dict[str, int]


@dataclass
class RunResult:
    """What one run saw: the host's samples, the marks' times, the summaries."""

    run: Run
    samples: list[Sample] = field(default_factory=list)
    marks: dict[str, dict[str, float]] = field(default_factory=dict)  # guest -> mark -> t
    summaries: dict[str, GuestSummary] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    host_cpu_s: float | None = None


def host_args(cfg: ControllersConfig, run: Run) -> list[str]:
    args = ["--backend", cfg.backend, "--host-memory", str(cfg.host_memory_bytes)]
    args += ["--swap", str(cfg.swap_bytes), "--deflate-on-oom", "--quiet"]
    args += ["--stats-interval", "1"]
    if run.controller is not None:
        args += ["--controller", run.controller, "--balloon-min", str(cfg.balloon_min_bytes)]
    if cfg.vmm_overhead_bytes is not None:
        args += ["--vmm-overhead", str(cfg.vmm_overhead_bytes)]
    return args


def guest_lines(cfg: ControllersConfig, run: Run, addr: str, work: Path) -> list[list[str]]:
    lines = []
    for i in range(cfg.guests):
        name = f"g{i + 1:02d}"
        scenario = work / f"group{group_of(i)}.toml"
        args = ["--host", addr, "--id", name, "--ram", str(cfg.guest_ram_bytes)]
        args += ["--policy", run.policy, "--scenario", str(scenario), "--seed", str(i)]
        args += ["--boot-footprint", str(cfg.boot.size_bytes)]
        args += ["--boot-orders", format_orders(cfg.boot.orders)]
        args += ["--boot-holes", f"{cfg.boot.holes:g}", "--connect-timeout", "60"]
        args += ["--timeline", str(work / f"{name}.timeline.jsonl"), "--quiet"]
        lines.append(args)
    return lines


class MarkReader:
    """Marks from one guest's --timeline as they are written, timed by the lab's
    clock when first seen (at most one poll late)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = ""

    def new_marks(self) -> list[str]:
        try:
            with self.path.open("r", encoding="utf-8") as f:
                f.seek(self.offset)
                text = f.read()
                self.offset = f.tell()
        except OSError:
            return []
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        out = []
        for line in lines:
            if '"mark"' in line:
                row = json.loads(line)
                if "mark" in row:
                    out.append(str(row["mark"]))
        return out


def run_one(cfg: ControllersConfig, run: Run, stop: threading.Event | None = None) -> RunResult:
    """One run against its own host: start, sample until the guests end, collect
    (times from the run's own start)."""
    t0 = time.monotonic()
    work = cfg.out / run.name
    work.mkdir(parents=True, exist_ok=True)
    for grp, busy in (("A", GROUP_A_BUSY), ("B", GROUP_B_BUSY)):
        (work / f"group{grp}.toml").write_text(scenario_text(busy, cfg.work_bytes, cfg.phase_s))
    res = RunResult(run)
    group = ProcessGroup(work)
    try:
        addr, host = group.start_host(host_args(cfg, run))
        lines = guest_lines(cfg, run, addr, work)
        guests = group.start_guest_group(lines, "guests")
        readers = {
            f"g{i + 1:02d}": MarkReader(work / f"g{i + 1:02d}.timeline.jsonl")
            for i in range(cfg.guests)
        }
        limit = PHASES * cfg.phase_s * 3 + 120  # a run far past its length has hung
        with grpc.insecure_channel(addr) as ch:
            source = StatsSource(codec.stub(ch), t0)
            while guests.poll() is None and not (stop is not None and stop.is_set()):
                try:
                    s = source.sample()
                except grpc.RpcError as e:
                    res.errors.append(f"host stats: {e.code().name}")
                    break
                res.samples.append(
                    Sample(s.t, s.resident_bytes, s.swap_used_bytes, s.oom_kills, dict(s.guests))
                )
                for g, r in readers.items():
                    for m in r.new_marks():
                        res.marks.setdefault(g, {}).setdefault(m, s.t)
                if s.t > limit:
                    res.errors.append(f"run {run.name} did not end within {limit:.0f} s")
                    break
                time.sleep(POLL)
            res.host_cpu_s = cpu_seconds(host.pid)
        summaries, errors = group.group_summaries(guests, "guests", timeout=120)
        res.summaries, res.errors = summaries, res.errors + errors
        if host.poll() is not None:
            res.errors.append(f"host exited with {host.returncode}")
    finally:
        group.close()
    res.elapsed_s = round(time.monotonic() - t0, 1)
    return res


def _stop_runs(stop: threading.Event, threads: Sequence[threading.Thread]) -> None:
    """Ctrl-C or SIGTERM: every run told to stop, and waited for while each stops
    its host and guests (their own sessions: no signal of ours reaches them). A
    second signal meanwhile must not leave them running: it is ignored."""
    stop.set()
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for th in threads:
            if th.is_alive():
                th.join(STOP_SECONDS)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def run_all(cfg: ControllersConfig) -> list[RunResult]:
    """Every run at once, each in a thread of its own (they mostly wait)."""
    results: dict[Run, RunResult] = {}
    failed: list[BaseException] = []

    stop = threading.Event()

    def one(run: Run) -> None:
        if stop.is_set():
            results[run] = RunResult(run, errors=["not started: interrupted"])
            return
        try:
            results[run] = run_one(cfg, run, stop)
        except BaseException as e:  # said below, after every run has ended
            failed.append(e)
            results[run] = RunResult(run, errors=[f"{type(e).__name__}: {e}"])

    threads = [threading.Thread(target=one, args=(r,), name=r.name) for r in cfg.runs]
    try:
        for i, th in enumerate(threads):
            if i:
                # Staggered: every run's busy guests allocate at the same offsets into
                # the run, and at once they would share 2 cores with all the others'.
                time.sleep(cfg.phase_s / 2 / len(threads))
            th.start()
        for th in threads:
            th.join()
    except KeyboardInterrupt:
        _stop_runs(stop, threads)
        raise
    for e in failed:
        if isinstance(e, UsageError | KeyboardInterrupt):
            raise e
    return [results[r] for r in cfg.runs]
