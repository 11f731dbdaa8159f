"""`pagehint density`: how many guests fit on one host before it swaps, per policy.

The launch test of the page hinting RFC v10 cover letter ("Benefit analysis 1",
docs/plans/density-sources.md): one host with finite memory and swap; guests
launched one after another, each booting (its boot footprint), touching memory,
freeing it and staying idle; the next launched once the previous has settled;
stop when the host first swaps, at its first OOM kill, or at --guests-max. Once
per policy, each against a fresh host. The memhog mode is the letter's
"Benefit analysis 2": three guests run one fixed job after another, and the
figures are each job's wall time and the swap used.

The launch/settle/stop logic (``launch_guests``) sees the host and the guests
only through two small seams, ``HostSource`` and ``Launched``, so it is tested
with fakes and no processes; ``run_density`` plugs real ones in.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NotRequired, Protocol, TypedDict, cast

import grpc

from guest.workloads.boot import format_orders
from lab.procs import ProcessGroup
from pagehint.config import MAX_SWAP_RATIO, BootConfig
from pagehint.errors import UsageError
from pagehint.schema import GuestSummary, decode
from pagehint.units import format_size
from virtqueue import codec

log = logging.getLogger(__name__)

# Seconds between samples of the host's figures: each is a Stats call, and guests
# settle over seconds.
POLL = 0.5
# A guest's host resident counts as unchanged while it moves by less than one of the
# host's chunks (2 MiB: the host model's LRU unit, a THP; host/memory/hostmem.py).
SETTLE_TOLERANCE = 2 << 20
# A guest that has not settled this long after its launch is given up on (the run
# goes on, the guest is marked "timeout"): a 4 GiB touch here takes seconds, and the
# swap costs of a full host minutes at worst.
SETTLE_TIMEOUT = 900.0

Mode = Literal["launch", "memhog"]
Phase = Literal["booting", "touching", "idle", "gone"]
StopReason = Literal["swap", "oom", "guests_max", "jobs_done", "error"]
Ending = Literal["settled", "interval", "killed", "exited", "timeout", "stopped"]


@dataclass(frozen=True)
class HostSample:
    """The host's figures at one moment (seconds since the policy's run began)."""

    t: float
    resident_bytes: int
    swap_used_bytes: int
    oom_kills: int
    guests: Mapping[str, int] = field(default_factory=dict)  # guest id -> host resident
    # Pages ever written to swap: a swap-out whose pages came back (or were
    # discarded) before the next sample is still a swap.
    swap_outs: int = 0


class HostSource(Protocol):
    def sample(self) -> HostSample: ...


class Launched(Protocol):
    """What the lab sees of one launched guest while it runs."""

    name: str

    def phase(self) -> Phase: ...

    def touch_seconds(self) -> float | None: ...


@dataclass(frozen=True)
class Plan:
    """How guests are launched and when the run stops (the flags, checked)."""

    guests_max: int
    # A guest has settled once idle and its host resident unchanged this long.
    settle: float
    # Launch the next guest this long after the last instead (None: when settled).
    interval: float | None = None
    # Stop once the host has swapped (the launch test); the memhog mode runs every job.
    stop_at_swap: bool = True
    poll: float = POLL
    settle_timeout: float = SETTLE_TIMEOUT


@dataclass
class Launch:
    """One guest of the run: when it was launched, what the host held then, how it
    ended (settled, killed, ...) and what the host held for it at that moment."""

    guest: str
    launched_s: float
    swap_used_at_launch_bytes: int
    host_resident_at_launch_bytes: int
    ended_s: float | None = None
    ending: Ending | None = None
    host_resident_for_guest_bytes: int | None = None
    swap_used_after_bytes: int | None = None
    touch_s: float | None = None


@dataclass
class Outcome:
    """What one policy's run saw."""

    launches: list[Launch] = field(default_factory=list)
    samples: list[HostSample] = field(default_factory=list)
    stop_reason: StopReason = "guests_max"
    # 1-based number of the guest during whose run the host first swapped, and the
    # one during whose run it first killed a guest.
    first_swap_guest: int | None = None
    first_oom_guest: int | None = None

    @property
    def guests_fit(self) -> int:
        """Guests that ran without the host swapping or killing: those launched before
        the one that pushed it over (all of them if none did)."""
        firsts = [g for g in (self.first_swap_guest, self.first_oom_guest) if g is not None]
        return min(firsts) - 1 if firsts else len(self.launches)

    @property
    def oom_kills(self) -> int:
        return max((s.oom_kills for s in self.samples), default=0)

    @property
    def swap_used_end_bytes(self) -> int:
        return self.samples[-1].swap_used_bytes if self.samples else 0


def launch_guests(
    plan: Plan,
    launch: Callable[[int], Launched],
    host: HostSource,
    sleep: Callable[[float], None] = time.sleep,
    out: Outcome | None = None,
) -> Outcome:
    """Launch guests one after another until the plan says stop (see the module).

    ``out`` is filled as the run goes, so a caller whose host failed midway keeps
    what was seen."""
    out = Outcome() if out is None else out
    for i in range(plan.guests_max):
        s = _take(host, out)
        guest = launch(i)
        rec = Launch(guest.name, s.t, s.swap_used_bytes, s.resident_bytes)
        out.launches.append(rec)
        log.info(
            f"[{s.t:6.1f}s] launched {guest.name} ({i + 1}/{plan.guests_max}); host holds "
            f"{format_size(s.resident_bytes)}, swap used {format_size(s.swap_used_bytes)}"
        )
        _follow(plan, guest, rec, host, out, sleep)
        rec.touch_s = guest.touch_seconds()
        log.info(_ended_line(rec))
        if out.oom_kills:
            out.stop_reason = "oom"
            return out
        if plan.stop_at_swap and out.first_swap_guest is not None:
            out.stop_reason = "swap"
            return out
    out.stop_reason = "guests_max" if plan.stop_at_swap else "jobs_done"
    return out


def _take(host: HostSource, out: Outcome) -> HostSample:
    s = host.sample()
    out.samples.append(s)
    swapped = s.swap_used_bytes > 0 or s.swap_outs > 0
    if swapped and out.first_swap_guest is None and out.launches:
        out.first_swap_guest = len(out.launches)
    if s.oom_kills > 0 and out.first_oom_guest is None and out.launches:
        out.first_oom_guest = len(out.launches)
    return s


def _follow(
    plan: Plan,
    guest: Launched,
    rec: Launch,
    host: HostSource,
    out: Outcome,
    sleep: Callable[[float], None],
) -> None:
    """Sample the host until this guest has settled (or the plan moves on)."""
    last: int | None = None
    since = rec.launched_s
    while True:
        sleep(plan.poll)
        s = _take(host, out)
        held = s.guests.get(guest.name)
        rec.ended_s, rec.swap_used_after_bytes = s.t, s.swap_used_bytes
        if held is not None:
            rec.host_resident_for_guest_bytes = held
        phase = guest.phase()
        ending: Ending | None = None
        if s.oom_kills:
            # The first OOM kill ends the run: this guest's (it is gone from the
            # host's sessions), or another's while this one ran ("stopped").
            ending = "killed" if held is None or phase == "gone" else "stopped"
        elif phase == "gone":
            ending = "exited"
        elif plan.interval is not None:
            ending = "interval" if s.t - rec.launched_s >= plan.interval else None
        elif phase == "idle" and held is not None:
            if last is None or abs(held - last) >= SETTLE_TOLERANCE:
                last, since = held, s.t
            elif s.t - since >= plan.settle:
                ending = "settled"
        if ending is None and s.t - rec.launched_s >= plan.settle_timeout:
            ending = "timeout"
        if ending is not None:
            rec.ending = ending
            return


def _ended_line(rec: Launch) -> str:
    held = rec.host_resident_for_guest_bytes
    touch = "n/a" if rec.touch_s is None else f"{rec.touch_s:.1f} s"
    return (
        f"[{rec.ended_s or 0:6.1f}s] {rec.guest} {rec.ending}: touch took {touch}, host holds "
        f"{'n/a' if held is None else format_size(held)} for it, swap used "
        f"{format_size(rec.swap_used_after_bytes or 0)}"
    )


# ---- the run's settings ----------------------------------------------------------------


@dataclass(frozen=True)
class DensityConfig:
    """`pagehint density`'s settings, checked (pagehint/cli/density.py)."""

    mode: Mode
    host_memory_bytes: int
    swap_bytes: int
    guest_ram_bytes: int
    touch_bytes: int
    policies: tuple[str, ...]
    plan: Plan
    backend: str
    boot: BootConfig
    out: Path
    # Host flags passed through only when given (else the host's own defaults).
    vmm_overhead_bytes: int | None = None
    discard: str | None = None


def check_sizes(
    host_memory: int, swap: int, guest_ram: int, touch: int, boot: BootConfig, vmm: int | None
) -> None:
    """Sizes that cannot make a run, each one line (before anything starts)."""
    if host_memory <= 0:
        raise UsageError("--host-memory must be positive")
    if swap < 0:
        raise UsageError("--swap must not be negative")
    # The host's own rule (HostConfig): more swap than 64 x memory is a typo, not a
    # machine; said here too so nothing starts.
    if swap > MAX_SWAP_RATIO * host_memory:
        raise UsageError(
            f"--swap {format_size(swap)}: more than {MAX_SWAP_RATIO} x --host-memory "
            f"{format_size(host_memory)}; is a unit wrong?"
        )
    if touch <= 0:
        raise UsageError("--touch must be positive")
    if touch > guest_ram:
        raise UsageError(
            f"--touch {format_size(touch)}: more than --guest-ram {format_size(guest_ram)}"
        )
    one = guest_ram + (vmm or 0)
    if one > host_memory + swap:
        raise UsageError(
            f"--guest-ram {format_size(guest_ram)}"
            + (f" (+ --vmm-overhead {format_size(vmm or 0)})" if vmm else "")
            + f": one guest is more than the host's memory and swap together "
            f"({format_size(host_memory)} + {format_size(swap)})"
        )
    if boot.span_bytes() >= guest_ram:
        raise UsageError(
            f"--boot-footprint {format_size(boot.size_bytes)} (with its holes "
            f"{format_size(boot.span_bytes())}): not less than --guest-ram "
            f"{format_size(guest_ram)}"
        )


def scenario_text(touch_bytes: int) -> str:
    """The job every guest runs after its boot: touch, free, stay idle.

    The touch is order-0 pages (malloc + memset faults base pages; the cover letter
    does not say whether its guests had transparent huge pages). The guest then
    stays idle until the run stops it, as the letter's guests stayed up after their
    test program exited."""
    steps = [
        ("mark", 'label = "touch"'),
        ("alloc", f'name = "touch"\nsize = "{touch_bytes}B"\norder = 0'),
        ("mark", 'label = "free"'),
        ("free", 'name = "touch"'),
        ("mark", 'label = "idle"'),
        ("sleep", "seconds = 86400"),
    ]
    body = "\n\n".join(f'[[steps]]\nop = "{op}"\n{fields}' for op, fields in steps)
    return f'name = "density"\n\n{body}\n'


# ---- the real seams: a guest process, the host's Stats ---------------------------------


class GuestProcess:
    """A launched guest process, read through its --timeline's mark rows."""

    def __init__(self, name: str, proc: subprocess.Popen[str], timeline: Path) -> None:
        self.name = name
        self.proc = proc
        self.timeline = timeline
        self.marks: dict[str, float] = {}
        self._offset = 0
        self._partial = ""

    def _read_marks(self) -> None:
        try:
            with self.timeline.open("r", encoding="utf-8") as f:
                f.seek(self._offset)
                text = f.read()
                self._offset = f.tell()
        except OSError:
            return  # not written yet
        text, self._partial = self._partial + text, ""
        lines = text.split("\n")
        self._partial = lines.pop()  # a line still being written
        for line in lines:
            if '"mark"' in line:
                row = json.loads(line)
                if "mark" in row:
                    self.marks.setdefault(str(row["mark"]), float(row["t"]))

    def phase(self) -> Phase:
        self._read_marks()
        if self.proc.poll() is not None:
            return "gone"
        if "idle" in self.marks:
            return "idle"
        return "touching" if "touch" in self.marks else "booting"

    def touch_seconds(self) -> float | None:
        self._read_marks()
        if "touch" in self.marks and "free" in self.marks:
            return round(self.marks["free"] - self.marks["touch"], 3)
        return None

    def summary(self, timeout: float) -> tuple[GuestSummary | None, str | None]:
        """(its summary, why there is none): after SIGTERM, or after the host killed it."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        lines = [x for x in (out or "").splitlines() if x.strip()]
        if lines:
            try:
                return decode(GuestSummary, lines[-1]), None
            except UsageError as e:
                return None, f"{self.name}: {e}"
        return None, f"{self.name}: exited {self.proc.returncode} with no summary"


def summary_number(s: GuestSummary | None, key: str) -> float | None:
    """A guest summary's figure that older guests do not write (fault waits, ...)."""
    if s is None:
        return None
    v = cast(Mapping[str, object], s).get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


class PolicyRow(TypedDict):
    """One policy's result (in summary.json and `--json`)."""

    policy: str
    guests_launched: int
    guests_fit: int
    first_swap_guest: int | None
    stop_reason: str
    swap_used_end_bytes: int
    swap_used_peak_bytes: int
    host_resident_peak_bytes: int
    oom_kills: int
    elapsed_s: float
    guests: list[dict[str, object]]
    errors: list[str]
    host_timeline: NotRequired[list[dict[str, float | int]]]


class StatsSource:
    """The host's figures from its Stats call (every guest's: the lab is on loopback)."""

    def __init__(self, stub: codec.BalloonStub, t0: float) -> None:
        self.stub = stub
        self.t0 = t0
        self.last: codec.HostFigures | None = None

    def sample(self) -> HostSample:
        fig = codec.decode_host_stats(self.stub.Stats(codec.encode_stats_request(), timeout=10))
        self.last = fig
        return HostSample(
            t=round(time.monotonic() - self.t0, 2),
            resident_bytes=fig.resident_bytes,
            swap_used_bytes=fig.swap_used_bytes,
            oom_kills=fig.oom_kills,
            guests={g.guest_id: g.resident_bytes for g in fig.guests},
            swap_outs=fig.swap_outs,
        )


# ---- one policy's run, with real processes ---------------------------------------------


def host_args(cfg: DensityConfig) -> list[str]:
    args = ["--backend", cfg.backend, "--host-memory", str(cfg.host_memory_bytes)]
    args += ["--swap", str(cfg.swap_bytes), "--quiet"]
    # Every guest comes from this one address: the host's per-address quota must not
    # be what refuses the last ones.
    args += ["--max-sessions-per-peer", str(max(16, cfg.plan.guests_max))]
    if cfg.vmm_overhead_bytes is not None:
        args += ["--vmm-overhead", str(cfg.vmm_overhead_bytes)]
    if cfg.discard is not None:
        args += ["--discard", cfg.discard]
    return args


def guest_args(cfg: DensityConfig, addr: str, policy: str, name: str, i: int) -> list[str]:
    work = cfg.out / folder_name(policy)
    args = ["--host", addr, "--id", name, "--ram", str(cfg.guest_ram_bytes)]
    args += ["--policy", policy, "--scenario", str(cfg.out / SCENARIO), "--seed", str(i)]
    args += ["--boot-footprint", str(cfg.boot.size_bytes)]
    args += ["--boot-orders", format_orders(cfg.boot.orders), "--boot-holes", f"{cfg.boot.holes:g}"]
    args += ["--timeline", str(work / f"{name}.timeline.jsonl")]
    if cfg.backend == "shm":
        # Real bytes: at its end each guest reads back every page it still holds
        # (its boot footprint, through every eviction), beside the checks at frees.
        args.append("--check")
    return [*args, "--connect-timeout", "60", "--quiet"]


SCENARIO = "density.toml"


def folder_name(policy: str) -> str:
    """A policy's subfolder: its name, with a plug-in's path characters replaced."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in policy)


@dataclass
class PolicyRun:
    """One policy's run: what launch_guests saw, and its guests' summaries."""

    policy: str
    outcome: Outcome = field(default_factory=Outcome)
    guests: list[GuestProcess] = field(default_factory=list)
    summaries: dict[str, GuestSummary] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    host: codec.HostFigures | None = None
    elapsed: float = 0.0


def run_policy(cfg: DensityConfig, policy: str) -> PolicyRun:
    """One policy against a fresh host: launch, watch, stop, collect."""
    work = cfg.out / folder_name(policy)
    work.mkdir(parents=True, exist_ok=True)
    group = ProcessGroup(work)
    run = PolicyRun(policy)
    t0 = time.monotonic()
    try:
        addr, host = group.start_host(host_args(cfg))

        def launch(i: int) -> GuestProcess:
            name = f"g{i + 1:02d}"
            p = group.start_guest(guest_args(cfg, addr, policy, name, i), name)
            g = GuestProcess(name, p, work / f"{name}.timeline.jsonl")
            run.guests.append(g)
            return g

        with grpc.insecure_channel(addr) as ch:
            source = StatsSource(codec.stub(ch), t0)
            try:
                launch_guests(cfg.plan, launch, source, out=run.outcome)
            except grpc.RpcError as e:
                run.outcome.stop_reason = "error"
                run.errors.append(f"host stats: {e.code().name}")
            run.host = source.last
        _stop_guests(run)
        if host.poll() is not None:
            run.errors.append(f"host exited with {host.returncode}")
    finally:
        group.close()
    run.elapsed = time.monotonic() - t0
    return run


def _stop_guests(run: PolicyRun) -> None:
    """SIGTERM every guest still running (they end cleanly), then their summaries."""
    for g in run.guests:
        if g.proc.poll() is None:
            g.proc.send_signal(signal.SIGTERM)
    for g in run.guests:
        s, why = g.summary(timeout=60)
        if s is not None:
            run.summaries[g.name] = s
        elif why is not None:
            run.errors.append(why)
