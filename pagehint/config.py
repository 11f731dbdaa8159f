"""Every knob in one place: frozen dataclasses built once from flags and PAGEHINT_* env.

The types validate themselves (``__post_init__``), as uvicorn's Config does: a
value out of range, or two settings that do not go together, is a ConfigError
naming the flag that sets it, however the config was built (the CLI, a lab
command, a test). The CLI parses text into values and maps flags to fields,
checking only what a config cannot see (files, the guest's plugin loader). No
other module reads os.environ: the CLI passes the environment in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeGuard

from pagehint.errors import UsageError
from pagehint.units import format_size
from virtqueue.contract import (
    MAX_ORDER,
    MAX_TOUCH_RUNS,
    MIN_GUEST_RAM,
    PAGEBLOCK_ORDER,
    guest_id_problem,
    ram_size_problem,
)
from virtqueue.framing import socket_path_problem

if TYPE_CHECKING:
    from pagehint.tls import TlsConfig

LOOPS = ("auto", "uvloop", "asyncio")
BACKENDS = ("sim", "shm")
DISCARDS = ("free", "dontneed")
TRACE_MAPPINGS = ("identity", "compact")  # where a trace's pfns land: guest/trace/replay.py
# Pages a trace never names, at the start: reported (as on a guest that has been
# up), free (as just after boot, not yet reported) or allocated.
TRACE_UNTOUCHED = ("reported", "free", "allocated")
BUILTIN_POLICIES = ("bitmap", "reporting", "none")  # else MODULE:CLASS or FILE.py:CLASS
WORKLOADS = ("churn", "fragment", "memhog")  # guest/workloads/builtin.py
MAX_CAPACITY = 512  # blocks per report
MAX_COUNT = 1_000_000_000  # any other count a flag takes (--threshold)
MAX_RATE = 10_000_000.0  # allocator operations per second: far above what Python reaches
MAX_SPEED = 1e6
# Swap at most this many times --host-memory (HostConfig._check_host_memory says why).
MAX_SWAP_RATIO = 64
# The host memory model's defaults (sources beside HostConfig's fields).
SWAP_IN_COST = 85e-6
SWAP_OUT_COST = 20e-6
VMM_OVERHEAD = 72 << 20


class ConfigError(UsageError):
    """A setting out of its range, or settings that do not go together (one line)."""


# A check answers None (fine) or what is wrong with the value.
Check = Callable[[object], str | None]


def _number(v: object, whole: bool) -> TypeGuard[float]:
    # bool is an int to Python, never a count or a time to us.
    kinds = int if whole else (int, float)
    return isinstance(v, kinds) and not isinstance(v, bool)


def between(lo: float, hi: float, whole: bool = False) -> Check:
    """A number from ``lo`` to ``hi``; ``whole``: an int (a count, an order, a port)."""

    def check(v: object) -> str | None:
        ok = _number(v, whole) and lo <= v <= hi
        kind = "a whole number " if whole and not _number(v, True) else ""
        return None if ok else f"must be {kind}{_show(lo)}..{_show(hi)}"

    return check


def at_least(lo: float, strict: bool = False, whole: bool = False) -> Check:
    def check(v: object) -> str | None:
        ok = _number(v, whole) and (v > lo if strict else v >= lo) and v != float("inf")
        return None if ok else f"must be {'above' if strict else 'at least'} {lo:g}"

    return check


def _policy_name(v: object) -> str | None:
    # Only the form: loading a MODULE:CLASS is the guest's (guest/hinting/plugin.py).
    if v in BUILTIN_POLICIES or (isinstance(v, str) and ":" in v):
        return None
    return f"unknown policy (choose from {', '.join(BUILTIN_POLICIES)}, or MODULE:CLASS)"


def _guest_id(v: object) -> str | None:
    # The contract's rule, the host's too: checked before connecting.
    return guest_id_problem(v) if isinstance(v, str) else "must be text"


def one_of(choices: Sequence[str]) -> Check:
    def check(v: object) -> str | None:
        return None if v in choices else f"unknown value (choose from {', '.join(choices)})"

    return check


# CONFIG_HZ's choices (kernel/Kconfig.hz), and 0 for an exact timer.
TIMER_HZ_CHOICES = (0, 100, 250, 300, 1000)


def _timer_hz(v: object) -> str | None:
    if _number(v, True) and v in TIMER_HZ_CHOICES:
        return None
    return "must be one of 0, 100, 250, 300, 1000 (a kernel's CONFIG_HZ; 0: an exact timer)"


def _kernel_at(v: object) -> str | None:
    # CONFIG_PHYSICAL_ALIGN (2 MiB) from LOAD_PHYSICAL_ADDR (16 MiB) up; whether it
    # fits the guest's RAM is the layout's to say (guest/mm/layout.py).
    if _number(v, True) and v >= 16 << 20 and not v % (2 << 20) and v < 1 << 46:
        return None
    return "must be a multiple of 2MiB from 16MiB up (where a kernel loads)"


def optional(inner: Check) -> Check:
    return lambda v: None if v is None else inner(v)


def _show(v: object) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _ops_rate(v: object) -> str | None:
    if _number(v, whole=False) and 0 < v <= MAX_RATE:
        return None
    return f"must be above 0 and at most {MAX_RATE:,.0f} operations per second"


def validate(obj: object, rules: Sequence[tuple[str, str, Check]]) -> None:
    """Raise ConfigError at the first (field, flag, check) that ``obj`` fails."""
    for name, flag, check in rules:
        value = getattr(obj, name)
        problem = check(value)
        if problem is not None:
            raise ConfigError(f"{flag} {_show(value)}: {problem}")


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class HintingConfig:
    """The hinting policy's knobs. Defaults follow the kernel (docs/architecture.md)."""

    policy: str = "bitmap"
    # Hinting/reporting order: 9 = 2 MiB chunks, so the host's THPs are not split.
    order: int = PAGEBLOCK_ORDER
    # Blocks per report: 16 in the seed design, 32 (PAGE_REPORTING_CAPACITY) merged.
    capacity: int | None = None
    # Seed design: new bits in a zone before its worker is scheduled. v10 uses its
    # batch size (max_pages, 16) for both, so None means "the capacity".
    threshold: int | None = None
    # Merged design: delay before a requested pass runs (2 s, as page_reporting_delay).
    delay: float = 2.0
    # Merged design: the pass is delayed work, so it runs when the kernel's timer
    # wheel fires: jiffies at this HZ, the expiry rounded up to the wheel level's
    # granularity (guest/hinting/timer_wheel.py). 250 = Debian 12's CONFIG_HZ
    # (/boot/config-6.1.0-57-amd64); 0 = an exact timer.
    timer_hz: int = 250
    # Merged design: a pass reports at most nr_free / (capacity * divisor) + 1 per list.
    budget_divisor: int = 16
    # Stopping, a report in flight is waited for this long; one still unanswered
    # then is abandoned with its blocks left isolated (never put back while the
    # host may discard them). No timeout applies while running: a report is out
    # until the host answers or is fenced.
    stop_grace: float = 10.0
    # Seed design departures, each off by default (v10 has none of them):
    # walk a zone whose bits have waited this long below the threshold (0: never);
    bitmap_flush_after: float = 0.0
    # after a failed report, set its chunks' bits again and back off before walking;
    bitmap_retry: bool = False
    # walk every zone with new bits once one reaches the threshold, batching across zones.
    bitmap_cross_zone: bool = False
    # With bitmap_retry: the wait after a failure, doubling from backoff_min to backoff_max.
    backoff_min: float = 0.1
    backoff_max: float = 5.0
    # DANGEROUS demonstration switch: report without isolating, to show the data
    # loss isolation prevents (README "What the demo shows").
    unsafe_skip_isolation: bool = False

    def __post_init__(self) -> None:
        validate(
            self,
            (
                ("policy", "--policy", _policy_name),
                ("order", "--hinting-order", between(0, MAX_ORDER, whole=True)),
                ("capacity", "--capacity", optional(between(1, MAX_CAPACITY, whole=True))),
                ("threshold", "--threshold", optional(between(1, MAX_COUNT, whole=True))),
                ("delay", "--delay", at_least(0)),
                ("timer_hz", "--timer-hz", _timer_hz),
                ("budget_divisor", "budget divisor", between(1, MAX_COUNT, whole=True)),
                ("stop_grace", "--stop-grace", at_least(0)),
                ("bitmap_flush_after", "--flush-after", at_least(0)),
                ("backoff_min", "backoff", at_least(0, strict=True)),
                ("backoff_max", "backoff", at_least(self.backoff_min)),
            ),
        )

    def effective_threshold(self) -> int:
        return self.threshold if self.threshold is not None else self.effective_capacity()

    def effective_capacity(self) -> int:
        if self.capacity is not None:
            return self.capacity
        return 32 if self.policy == "reporting" else 16


MEMORY_LAYOUTS = ("auto", "linux", "none")
# /proc/sys/vm/min_free_kbytes takes any value from 0; below 128 the kernel's own
# floor (calculate_min_free_kbytes) is the sensible least, 1 GiB a generous most.
_min_free_kbytes = between(128, 1 << 20, whole=True)
MAX_CPUS = 8192  # CONFIG_NR_CPUS of Debian's kernel


@dataclass(frozen=True)
class MemoryConfig:
    """The guest kernel's page allocator (guest/mm/): which of Linux's rules run.

    Every default is the reference guest's (bench/reference/linux/: Debian 12's
    6.1 kernel, 2 GiB, 2 vCPUs under QEMU); each ``off`` is a named departure
    for comparison (README, "Departures")."""

    # Per-CPU page lists (guest/mm/pcp.py). Off: every free reaches the buddy and
    # the reporting hook at once.
    pcp: bool = True
    # Transparent huge pages on (Debian's CONFIG_TRANSPARENT_HUGEPAGE_ALWAYS=y):
    # khugepaged raises min_free_kbytes (set_recommended_min_free_kbytes).
    thp: bool = True
    # vCPUs: the zone's low watermark is split over them to size the per-CPU lists
    # (zone_highsize). The reference guest has 2.
    cpus: int = 2
    # Boot layout (guest/mm/layout.py): linux (reserved ranges and early boot's
    # allocations, measured) | none (all RAM free from pfn 0) | auto (linux from
    # 1 GiB of RAM, none below: guest/mm/layout.py says why).
    layout: str = "auto"
    # Allocations check the zone watermarks with lowmem_reserve
    # (get_page_from_freelist). Off: zones drain to empty.
    watermarks: bool = True
    # None: the kernel's (calculate_min_free_kbytes, raised for THP); else as set
    # in /proc/sys/vm/min_free_kbytes.
    min_free_kbytes: int | None = None
    # Where the kernel image was loaded, in bytes (the linux layout): 16 MiB,
    # CONFIG_PHYSICAL_START, as booted with nokaslr. Debian's kernel has KASLR, a
    # random 2 MiB-aligned address each boot; a real boot's is the start of
    # "Kernel code" in its /proc/iomem. The memory its decompression buffer leaves
    # written and free is found there (guest/mm/layout.py).
    kernel_at: int = 16 << 20

    def __post_init__(self) -> None:
        validate(
            self,
            (
                ("cpus", "--cpus", between(1, MAX_CPUS, whole=True)),
                ("kernel_at", "--kernel-at", _kernel_at),
                ("layout", "--boot-layout", one_of(MEMORY_LAYOUTS)),
                (
                    "min_free_kbytes",
                    "--min-free-kbytes",
                    optional(between(128, 262144 * 4, whole=True)),
                ),
            ),
        )


# The allocator before it followed the kernel this far: no per-CPU lists, no
# layout, no THP raise, no allocation watermarks. Unit tests of the buddy's own
# rules use it; `pagehint guest` names each part with its flag.
BARE_MEMORY = MemoryConfig(pcp=False, thp=False, layout="none", watermarks=False)


@dataclass(frozen=True)
class TraceConfig:
    """Replay a kernel page allocator trace (guest/trace/) as the workload."""

    path: str
    # Scale the trace's clock (2.0: twice as fast); None: as fast as possible.
    speed: float | None = 1.0
    # identity | compact: where the trace's pfns land in guest RAM (guest/trace/replay.py)
    mapping: str = "identity"
    # Count malformed lines instead of stopping at the first.
    lenient: bool = False
    # reported | free | allocated: the pages the trace never names, at the start.
    untouched: str = "reported"

    def __post_init__(self) -> None:
        validate(
            self,
            (
                ("speed", "--speed", optional(between(1e-3, MAX_SPEED))),
                ("mapping", "--trace-map", one_of(TRACE_MAPPINGS)),
                ("untouched", "--trace-untouched", one_of(TRACE_UNTOUCHED)),
            ),
        )


# The guest's boot footprint (guest/workloads/boot.py). Every figure below was measured
# on this project's development machine, a 2-vCPU Linux 6.18 guest (24 GiB), and is
# recorded in docs/plans/density-sources.md ("guest boot footprint", "This machine"):
#
# Size: what the kernel and userspace hold outside the page cache, MemTotal - MemFree -
# Cached - Buffers in /proc/meminfo = 238,980 kB (233 MiB) after 47 min idle-ish. A
# later reading (276 MiB) had more AnonPages only because this project's own Python
# processes were running. The page cache (698 MB-1.1 GB here) is left out: it was other
# people's work, not what a fresh guest holds. Used only where a lab command asks for it
# (`pagehint density`); `pagehint guest` defaults to 0, so its figures stay as they were.
BOOT_FOOTPRINT_MEASURED = 233 << 20
# Order mix, percent of the footprint's bytes per allocation order. From the same
# snapshot: AnonPages 34,768 kB, PageTables 2,028 kB and KernelStack 1,560 kB are order 0
# (no AnonHugePages; stacks are vmalloc'd, CONFIG_VMAP_STACK), Slab 96,464 kB split by
# /proc/slabinfo (pagesperslab x num_slabs: order 0 33.6%, 1 14.0%, 2 45.8%, 3 6.7%).
# Of those 134,820 kB: order 0 52.5%, 1 10.0%, 2 32.8%, 3 4.8%. The ~100 MiB meminfo
# does not itemise is assumed to follow the same mix.
BOOT_ORDERS_MEASURED: tuple[tuple[int, int], ...] = ((0, 52), (1, 10), (2, 33), (3, 5))
# Free space interleaved with it, per byte held: /proc/buddyinfo's free pages below
# order 9 (the hinting order: holes no 2 MiB report can take) over the memory in use
# (MemTotal - MemFree): 940 MiB / 1,389 MiB = 0.68 on this machine. That memory in use
# includes its page cache, whose churn made many of the holes: for a freshly booted
# guest this is an upper bound.
BOOT_HOLES_MEASURED = 0.7
MAX_BOOT_HOLES = 16.0


@dataclass(frozen=True)
class BootConfig:
    """Memory a booted guest holds for its whole run, allocated before its workload
    (guest/workloads/boot.py): ``size_bytes`` held, in blocks of ``orders`` (order,
    percent of the bytes), with ``holes`` x as much freed again between them."""

    size_bytes: int = 0
    orders: tuple[tuple[int, int], ...] = BOOT_ORDERS_MEASURED
    holes: float = BOOT_HOLES_MEASURED

    def __post_init__(self) -> None:
        validate(
            self,
            (
                ("size_bytes", "--boot-footprint", at_least(0, whole=True)),
                ("holes", "--boot-holes", between(0, MAX_BOOT_HOLES)),
            ),
        )
        require(bool(self.orders), "--boot-orders: give at least one order:percent")
        for order, pct in self.orders:
            require(
                _number(order, True) and 0 <= order <= MAX_ORDER,
                f"--boot-orders: order {order!r} must be 0..{MAX_ORDER}",
            )
            require(
                _number(pct, True) and 0 < pct <= 100,
                f"--boot-orders: order {order}'s share {pct!r} must be 1..100 (percent)",
            )
        require(
            len({o for o, _ in self.orders}) == len(self.orders),
            "--boot-orders: an order is given twice",
        )
        total = sum(p for _, p in self.orders)
        require(total == 100, f"--boot-orders: the shares add up to {total}, not 100")

    def span_bytes(self) -> int:
        """What the boot touches: the footprint and the holes between its blocks."""
        return int(self.size_bytes * (1 + self.holes))


@dataclass(frozen=True)
class GuestConfig:
    ram_bytes: int = 1 << 30
    guest_id: str = "guest"
    host: str | None = None
    workload: str | None = None
    # churn: operations per second (a load test of many guests turns this down)
    rate: float = 20_000.0
    scenario: str | None = None
    duration: float | None = None
    seed: int = 0
    json: bool = False
    timeline: str | None = None
    loop: str = "auto"
    metrics_port: int | None = None
    # Frames touched again after a discard are told to the host in batches of this
    # many runs (at most MAX_TOUCH_RUNS: a batch is one message of at most 64 KiB)...
    touch_batch: int = 1024
    # ...or after this long, whichever comes first.
    touch_flush_seconds: float = 0.2
    # Reconnect backoff when the host is away (jittered: half fixed, half random).
    reconnect_min: float = 0.1
    reconnect_max: float = 2.0
    # Log a report that the host has not answered for this long (it stays out).
    stall_warning: float = 5.0
    # VIRTIO_BALLOON_F_PAGE_POISON: the value freed pages are filled with (None: not offered).
    poison: int | None = None
    # Give up at start-up if the host cannot be reached in this long.
    connect_timeout: float = 10.0
    # Wait this long before booting (a load test's ramp: guests of a fleet do not
    # all boot in the same instant).
    start_delay: float = 0.0
    # Write every acknowledged report's latency (ms, one per line) here at the end.
    ack_log: str | None = None
    # Run the allocator's invariant checker at the end (O(pages): off for huge guests).
    check: bool = False
    metrics_addr: str = "127.0.0.1"
    tls: TlsConfig | None = None
    # Without TLS, the token the host's --tokens file has for this guest id.
    token: str | None = None
    # Write one JSON line per chain (times, ranges, status, host residency) here.
    reports: str | None = None
    # shm backend: the only folder whose RAM files the guest opens (a host names the
    # file; guest/ram.py). /dev/shm is where a host keeps them by default (in its
    # own pagehint-host-PID folder there); a host given --shm-dir needs the same here.
    shm_dir: str = "/dev/shm"
    # Carry the Reporting stream on the host's --queue-socket (a Unix socket on this
    # machine) instead of gRPC; negotiation, stats and close stay on --host.
    queue_socket: str | None = None
    hinting: HintingConfig = field(default_factory=HintingConfig)
    trace: TraceConfig | None = None
    # Held from boot to the end (off by default: see BootConfig above).
    boot: BootConfig = field(default_factory=BootConfig)
    # The guest kernel's page allocator: which of Linux's rules run.
    memory: MemoryConfig = field(default_factory=MemoryConfig)

    def __post_init__(self) -> None:
        require(
            _number(self.ram_bytes, whole=True),
            f"--ram {self.ram_bytes!r}: must be a whole number of bytes",
        )
        problem = ram_size_problem(self.ram_bytes)
        require(problem is None, f"--ram {format_size(self.ram_bytes)}: {problem}")
        validate(
            self,
            (
                ("guest_id", "--id", _guest_id),
                ("workload", "--workload", optional(one_of(WORKLOADS))),
                ("rate", "--rate", _ops_rate),
                ("duration", "--duration", optional(at_least(0, strict=True))),
                ("loop", "--loop", one_of(LOOPS)),
                ("metrics_port", "--metrics-port", optional(between(0, 65535, whole=True))),
                ("poison", "--poison", optional(between(0, 255, whole=True))),
                ("connect_timeout", "--connect-timeout", at_least(0, strict=True)),
                ("stall_warning", "--stall-warning", at_least(0, strict=True)),
                ("start_delay", "--start-delay", at_least(0)),
                ("touch_batch", "touch batch", between(1, MAX_TOUCH_RUNS, whole=True)),
                ("touch_flush_seconds", "touch flush", at_least(0, strict=True)),
                ("reconnect_min", "reconnect backoff", at_least(0, strict=True)),
                ("reconnect_max", "reconnect backoff", at_least(self.reconnect_min)),
            ),
        )
        runs = (self.workload, self.scenario, self.trace)
        require(
            sum(x is not None for x in runs) <= 1, "give one of --workload, --scenario and --trace"
        )
        token = self.token
        require(
            token is None or (token.isascii() and token.isprintable() and len(token) <= 256),
            "--token: must be printable ASCII, at most 256 characters",
        )
        require(
            self.reports is None or self.host is not None,
            "--reports logs the host's answers: give --host too",
        )
        require(
            (self.tls is None and token is None) or self.host is not None,
            "--tls-* and --token are for a host connection: give --host too",
        )
        require(self.tls is None or token is None, "give mutual TLS (--tls-*) or --token, not both")
        shm_dir = self.shm_dir
        require(
            isinstance(shm_dir, str) and bool(shm_dir.strip()) and "\0" not in shm_dir,
            f"--shm-dir {shm_dir!r}: give a folder",
        )
        _check_queue_socket(self.queue_socket)
        require(
            self.queue_socket is None or self.host is not None,
            "--queue-socket carries the stream of a host connection: give --host too",
        )
        self._check_boot()

    def _check_boot(self) -> None:
        if not self.boot.size_bytes:
            return
        # A trace replays the traced machine's own blocks: a boot of ours would hold
        # pages its events name.
        require(self.trace is None, "--boot-footprint is not for --trace (the trace has its own)")
        span = self.boot.span_bytes()
        require(
            span < self.ram_bytes,
            f"--boot-footprint {format_size(self.boot.size_bytes)} with --boot-holes "
            f"{self.boot.holes:g} touches {format_size(span)}: more than --ram "
            f"{format_size(self.ram_bytes)}",
        )


@dataclass(frozen=True)
class HostConfig:
    listen: str = "127.0.0.1:50051"
    backend: str = "sim"
    discard: str = "dontneed"
    # Host memory for all guests together (None: unlimited).
    capacity_bytes: int | None = None
    # Chains a guest may have outstanding (the virtqueue's size).
    queue_size: int = 64
    # Most page ranges one chain may carry.
    max_chain_ranges: int = 512
    shm_dir: str | None = None
    # A session with no traffic for this long is ended and its memory released.
    session_timeout: float = 30.0
    loop: str = "auto"
    metrics_port: int | None = None
    drain_seconds: float = 5.0
    # Seconds before each chain is processed: models a busy host whose device
    # thread gets to the virtqueue late (0: at once).
    latency: float = 0.0
    # Smallest order the emulated device accepts in a range (0: any). A departure:
    # QEMU has no such minimum; the guest then reports at the larger of this and
    # its own --reporting-order.
    min_order: int = 0
    # Fault injection (probability per chain, 0: off) and its random seed.
    inject_refuse: float = 0.0
    inject_discard_error: float = 0.0
    fault_seed: int = 0
    # Where metrics listen: loopback unless exposed on purpose (--metrics-addr).
    metrics_addr: str = "127.0.0.1"
    # Mutual TLS (None: plain text), and per-guest tokens where TLS is off.
    tls: TlsConfig | None = None
    tokens: dict[str, str] = field(default_factory=dict)
    # Most sessions at once: by default from the descriptor limit (see limits.py).
    max_sessions: int = 1024
    # Most sessions one client address may hold: a quarter of max_sessions, so one
    # client cannot take every slot, and at least 16 (the most guests `pagehint demo`
    # runs from one machine). 1024 / 4 = 256, the most `pagehint loadtest` runs.
    # (An identity, under TLS or tokens, holds at most one: its own guest id's.)
    max_sessions_per_peer: int = 256
    # Most calls one client address may have open at once, across all its
    # connections (host/calls.py): a connection with a call open is never closed as
    # idle, so without it one client holding a never-ending call (a Health Watch)
    # on each connection could hold every connection the host allows. A guest holds
    # one (its Reporting stream) plus a short unary call now and then: twice the
    # per-address sessions, plus 16 for probes and lab readers. 2 * 256 + 16.
    max_calls_per_peer: int = 528
    # Most connections at once, open or still handshaking; past it gRPC closes new
    # ones at once, so the descriptors never run out (a full descriptor table
    # locked every guest out, silently). By default from the descriptor limit
    # (limits.py), at most 4096: four per session at most, ~15 KiB of gRPC each.
    max_connections: int = 4096
    # A connection that has not sent its HTTP/2 preface (and, with TLS, finished its
    # handshake) this long after it was accepted is closed. Honest clients do it in
    # milliseconds; silent connections hold a slot until then, so it is short: a
    # flood of them is gone within a guest's 2 s reconnect backoff.
    handshake_timeout: float = 2.0
    # A connection with no call open for this long is closed (GOAWAY). A guest always
    # has one (its Reporting stream) and calls Stats several times a second; a client
    # that comes back later simply reconnects. As short as the handshake's, for the
    # same reason: connections that finished HTTP/2 and then sat silent held every
    # slot of a host with few descriptors for as long as this.
    idle_connection_timeout: float = 2.0
    # A failed token (a guess) blocks the client's address from having another token
    # checked for 0.1 s, doubling with each failure up to this; the failing answer
    # itself waits as long. 10 s: a guesser gets six tries a minute, and a guest that
    # shares the address and retries (RESOURCE_EXHAUSTED) is back within its connect
    # timeout once the guessing stops. 0: no throttle.
    auth_penalty_max: float = 10.0
    # The rest of the balloon (issue 24). How often a guest sends its stats
    # (seconds; 0: never): Firecracker's stats_polling_interval_s and QEMU's
    # guest-stats-polling-interval are the user's to set, off by default; 1 s is
    # the finest Firecracker takes (whole seconds), and what a controller needs.
    stats_interval: float = 1.0
    # Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM: off by default, as QEMU's
    # deflate-on-oom property and Firecracker's deflate_on_oom are.
    deflate_on_oom: bool = False
    # Offer VIRTIO_BALLOON_F_FREE_PAGE_HINT (issue 25): off by default, as QEMU's
    # free-page-hint property and Firecracker's free_page_hinting are. Hinted
    # blocks are recorded for snapshots to skip (host/hints.py says why they
    # are not discarded).
    free_page_hint: bool = False
    # A balloon controller on the host (host/control/): "mom", "proxmox",
    # "pressure", or MODULE:CLASS / FILE.py:CLASS of your own (None: none; targets
    # come only from `pagehint balloon`). Needs --host-memory: it reads the host's.
    controller: str | None = None
    # The least memory a controller should leave each guest (0: none set), given to
    # it as each source takes it: oVirt's guaranteed memory (libvirt's
    # <min_guarantee>, 0 when not set), Proxmox's "minimum memory" (not set: the
    # guest is not auto-ballooned), senpai's --min-size floor.
    balloon_min_bytes: int = 0
    # The host's own record: one JSON line per chain (wall time, guest, chain id,
    # status, the guest's resident bytes right after it).
    chain_log: str | None = None
    # The host's memory model (host/memory/hostmem.py; sources for every default in
    # docs/plans/density-sources.md). None: no model, the host holds whatever its
    # guests touch (as before issue 23), and the four settings below do nothing.
    # It differs from capacity_bytes (--memory-limit), which stays what it was: a
    # hard limit with no swap (the sim ledgers past it are refused, ENOMEM, and only
    # lazily freed frames are reclaimed). Not an alias: that would turn its refusals
    # into swapping and OOM kills for every setup that uses it. One or the other.
    host_memory_bytes: int | None = None
    # Swap for guests' frames (0: none; swap full and still over: the OOM killer).
    swap_bytes: int = 0
    # Per 4 KiB page: Intel SSD DC P4500 (NVMe), Lenovo Press product guide, Table 2,
    # "Read access latency random 85 µs" and "Write access latency random 20 µs".
    swap_in_cost: float = SWAP_IN_COST
    swap_out_cost: float = SWAP_OUT_COST
    # Each guest's VMM, resident from its negotiation and never swapped: 72 MiB, the
    # QEMU figure (S. Garzarella, "[PATCH v3 0/3] pc: mmap kernel (ELF image) and
    # initrd", qemu-devel 2019: smem USS of QEMU -m 1G with 16 instances, "71.6M"),
    # QEMU because the seed design's tests ran QEMU. An upper bound: it includes what
    # the tiny guest touched. Firecracker's SPECIFICATION.md says "<= 5 MiB".
    vmm_overhead_bytes: int = VMM_OVERHEAD
    # --backend shm with --swap: where the host's swap file goes (None: a private
    # 0700 folder of its own under /var/tmp, on disk, removed at stop).
    swap_dir: str | None = None
    # Also serve Reporting streams on this Unix socket (None: gRPC only), for guests
    # on this machine: a chain's round trip without gRPC's ~0.25 ms (host/queue_socket.py).
    queue_socket: str | None = None

    def __post_init__(self) -> None:
        validate(
            self,
            (
                ("backend", "--backend", one_of(BACKENDS)),
                ("discard", "--discard", one_of(DISCARDS)),
                ("capacity_bytes", "--memory-limit", optional(at_least(1, whole=True))),
                ("queue_size", "--queue-size", between(1, 32768, whole=True)),
                ("max_chain_ranges", "--max-chain-ranges", between(1, 4096, whole=True)),
                ("session_timeout", "--session-timeout", at_least(0, strict=True)),
                ("loop", "--loop", one_of(LOOPS)),
                ("metrics_port", "--metrics-port", optional(between(0, 65535, whole=True))),
                ("drain_seconds", "drain", at_least(0)),
                ("latency", "--latency", at_least(0)),
                ("min_order", "--min-order", between(0, MAX_ORDER, whole=True)),
                ("inject_refuse", "--inject-refuse", between(0, 1)),
                ("inject_discard_error", "--inject-discard-error", between(0, 1)),
                ("fault_seed", "--fault-seed", between(0, 2**63, whole=True)),
                ("max_sessions", "--max-sessions", between(1, 1_000_000, whole=True)),
                (
                    "max_sessions_per_peer",
                    "--max-sessions-per-peer",
                    between(1, 1_000_000, whole=True),
                ),
                ("max_calls_per_peer", "--max-calls-per-peer", between(1, 1_000_000, whole=True)),
                ("max_connections", "--max-connections", between(1, 1_000_000, whole=True)),
                ("handshake_timeout", "--handshake-timeout", between(0.001, 86400)),
                ("idle_connection_timeout", "--idle-connection-timeout", between(0.001, 86400)),
                ("auth_penalty_max", "--auth-penalty-max", between(0, 3600)),
                ("stats_interval", "--stats-interval", between(0, 3600)),
                ("balloon_min_bytes", "--balloon-min", at_least(0, whole=True)),
                ("host_memory_bytes", "--host-memory", optional(at_least(1, whole=True))),
                ("swap_bytes", "--swap", at_least(0, whole=True)),
                ("swap_in_cost", "--swap-in-cost", between(0, 1)),
                ("swap_out_cost", "--swap-out-cost", between(0, 1)),
                ("vmm_overhead_bytes", "--vmm-overhead", at_least(0, whole=True)),
            ),
        )
        require(not (self.tls and self.tokens), "give mutual TLS (--tls-*) or --tokens, not both")
        self._check_host_memory()
        _check_queue_socket(self.queue_socket)
        require(
            self.queue_socket is None or self.max_connections >= 2,
            f"--max-connections {self.max_connections}: at least 2 with --queue-socket "
            "(gRPC and the socket share it)",
        )
        require(
            self.controller is None or self.host_memory_bytes is not None,
            "--controller needs --host-memory (a controller reads the host's memory)",
        )
        require(
            self.balloon_min_bytes == 0 or self.controller is not None,
            "--balloon-min needs --controller (it is the controllers' floor)",
        )
        require(
            self.stats_interval == 0 or self.stats_interval >= 0.01,
            f"--stats-interval {self.stats_interval:g}: 0 (no stats) or at least 0.01 s",
        )

    def _check_host_memory(self) -> None:
        mem = self.host_memory_bytes
        if mem is None:
            require(self.swap_bytes == 0, "--swap needs --host-memory (swap for which memory?)")
            require(self.swap_dir is None, "--swap-dir needs --host-memory and --swap")
            return
        require(
            self.capacity_bytes is None,
            "give --host-memory (swap, OOM killer) or --memory-limit (a hard limit), not both",
        )
        # A units slip (MiB for GiB is 1024x) is caught; every sizing guide's ratio
        # passes with room (the RHEL 4 System Administration Guide asks twice the RAM
        # at most, "for up to 2 GB of physical RAM").
        require(
            MIN_GUEST_RAM + self.vmm_overhead_bytes <= mem + self.swap_bytes,
            f"--host-memory {format_size(mem)} + --swap {format_size(self.swap_bytes)} cannot "
            f"hold even the smallest guest ({format_size(MIN_GUEST_RAM)}) with --vmm-overhead "
            f"{format_size(self.vmm_overhead_bytes)}",
        )
        require(
            self.swap_bytes <= MAX_SWAP_RATIO * mem,
            f"--swap {format_size(self.swap_bytes)}: more than {MAX_SWAP_RATIO} times "
            f"--host-memory {format_size(mem)} (a units slip?)",
        )
        if self.swap_dir is not None:
            # The sim swaps books, not bytes: a swap file would be made and never used.
            require(self.backend == "shm", "--swap-dir: only with --backend shm (sim has no bytes)")
            require(self.swap_bytes > 0, "--swap-dir needs --swap (no swap, no swap file)")


def _check_queue_socket(path: str | None) -> None:
    if path is not None:
        problem = socket_path_problem(path) if isinstance(path, str) else "give a path"
        require(problem is None, f"--queue-socket {path!r}: {problem}")
