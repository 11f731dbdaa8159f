"""Every knob in one place: frozen dataclasses built once from flags and PAGEHINT_* env.

No other module reads os.environ: the CLI passes the environment in here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pagehint.tls import TlsConfig

from virtqueue.contract import PAGEBLOCK_ORDER

LOOPS = ("auto", "uvloop", "asyncio")


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

    def effective_threshold(self) -> int:
        return self.threshold if self.threshold is not None else self.effective_capacity()

    def effective_capacity(self) -> int:
        if self.capacity is not None:
            return self.capacity
        return 32 if self.policy == "reporting" else 16


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
    # free | allocated: the pages the trace never names, at the start.
    untouched: str = "free"


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
    # Frames touched again after a discard are told to the host in batches of this size...
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
    hinting: HintingConfig = field(default_factory=HintingConfig)
    trace: TraceConfig | None = None


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
    # The host's own record: one JSON line per chain (wall time, guest, chain id,
    # status, the guest's resident bytes right after it).
    chain_log: str | None = None
