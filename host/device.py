"""The balloon device: what one session's chains and touches do.

The chain path reads as Firecracker's ``process_free_page_reporting_queue``:
for a chain, check it (host/chains.py: refused whole, with the rule it broke,
before anything of it is discarded), discard each range through the memory
backend, and answer. Every chain gets exactly one answer (a ``UsedMsg``): DONE,
REFUSED with the rule it broke, or DISCARD_FAILED with the errno; a failure is
counted (host/device_metrics.py), never fatal: the stream survives all three.
Discards run synchronously on the event loop, and ``handle_report`` checks that
its session is still live immediately before discarding: once the session
table (host/sessions.py) marks a session ended — fenced, expired, replaced,
OOM-killed — no discard of it can start.

With ``--host-memory`` (host/memory/hostmem.py) a guest that offered
``host_memory`` gets a Notice for every Touched batch (``answer_touched``: its seq,
the wait its faults and the writeback they forced cost, its evicted frames, and
the id it acknowledges before their bytes move); evictions other guests caused
reach it on its own stream (the session table's ``wake_evicted``).
"""

from __future__ import annotations

import errno as errno_names
import logging
import operator
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from host.chains import ChainRefused, check_chain
from host.device_metrics import DeviceMetrics
from host.memory.base import MemoryBackend
from host.memory.hostmem import TouchOutcome
from host.sessions import Session, SessionTable
from pagehint.config import HostConfig
from pagehint.ratelog import RateLimitedLog
from virtqueue import codec
from virtqueue.codec import Fence, NoticeMsg, UsedMsg
from virtqueue.contract import PAGE_SIZE

log = logging.getLogger(__name__)

_second = operator.itemgetter(1)


@dataclass
class Faults:
    """Fault injection for tests and demos of the fault paths (off by default).

    ``refuse`` and ``discard_error`` are probabilities per chain; a refused chain
    is answered REFUSED (reason "injected"), a failed discard DISCARD_FAILED with
    EIO. Both are decided before anything is discarded, like the real faults.
    """

    refuse: float = 0.0
    discard_error: float = 0.0
    seed: int = 0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @property
    def active(self) -> bool:
        return self.refuse > 0 or self.discard_error > 0


class BalloonDevice:
    """The device: the session table, the chain and touch paths, the counters."""

    def __init__(
        self,
        backend: MemoryBackend,
        # Defaults are the host's (HostConfig), written there once.
        queue_size: int = HostConfig.queue_size,
        max_chain_ranges: int = HostConfig.max_chain_ranges,
        session_timeout: float = HostConfig.session_timeout,
        min_order: int = HostConfig.min_order,
        faults: Faults | None = None,
        max_sessions: int = HostConfig.max_sessions,
        max_sessions_per_peer: int | None = None,
        stats_interval: float = HostConfig.stats_interval,
        deflate_on_oom: bool = HostConfig.deflate_on_oom,
        free_page_hint: bool = HostConfig.free_page_hint,
    ) -> None:
        self.backend = backend
        self.min_order = min_order
        self.faults = faults if faults is not None and faults.active else None
        self.instance = secrets.token_hex(8)
        self.stats_interval = stats_interval
        self.metrics = DeviceMetrics()
        # One line per reason per interval, however many chains are refused.
        self.problems = RateLimitedLog(log)
        self.table = SessionTable(
            backend,
            self.metrics,
            queue_size=queue_size,
            max_chain_ranges=max_chain_ranges,
            session_timeout=session_timeout,
            max_sessions=max_sessions,
            max_sessions_per_peer=max_sessions_per_peer,
        )
        self.table.deflate_on_oom = deflate_on_oom
        self.table.free_page_hint = free_page_hint

    def open_session(
        self, offer: codec.Negotiation, identity: str | None = None, peer: str = ""
    ) -> codec.Accepted:
        """A negotiation, whatever carried it (gRPC, or lab/loopback.py in one
        process): the session opened (SessionTable.negotiate, which raises
        NegotiationError or SessionKilled) and the answer for it."""
        s, fence = self.table.negotiate(offer, identity, peer)
        return self.accepted(s, fence)

    def accepted(self, s: Session, fence: Fence | None) -> codec.Accepted:
        """The negotiation's answer for a new session."""
        return codec.Accepted(
            features=s.features,
            queue_size=self.table.queue_size,
            max_chain_ranges=s.capacity,
            session=s.token,
            backend=self.backend.name,
            shm_path=s.ram.shm_path,
            discard=self.backend.discard_mode,
            min_order=self.min_order,
            fence=fence,
            instance=self.instance,
            session_timeout_ms=min(int(self.table.session_timeout * 1000), 2**32 - 1),
            host_memory=s.host_memory,
            balloon=s.balloon is not None,
            stats_interval_ms=round(self.stats_interval * 1000) if s.balloon is not None else 0,
            migration=s.balloon is not None and s.balloon.snap is not None,
            touches_in_chain=s.touches_in_chain,
        )

    def handle_report(
        self, s: Session, chain_id: int, pfns: Sequence[int], orders: Sequence[int]
    ) -> UsedMsg | None:
        """Check and discard one chain; its answer, or None if its session has ended
        (a fence cancelled it: nothing was discarded, and nobody is listening)."""
        used = self._handle_report(s, chain_id, pfns, orders)
        if used is not None and log.isEnabledFor(logging.DEBUG):  # -v: a line per chain
            why = f" ({used.reason})" if used.reason else ""
            log.debug(
                f"guest {s.guest_id} chain {chain_id}: {len(pfns)} ranges, "
                f"{codec.STATUS_NAMES.get(used.status, used.status)}{why}, "
                f"{used.discarded_pages} pages discarded, resident {used.resident_bytes >> 20} MiB"
            )
        return used

    def _handle_report(
        self, s: Session, chain_id: int, pfns: Sequence[int], orders: Sequence[int]
    ) -> UsedMsg | None:
        if s.ended:
            return None
        try:
            ranges = check_chain(s, pfns, orders, self.min_order)
            if self.faults is not None and self.faults.rng.random() < self.faults.refuse:
                raise ChainRefused("injected", "refused by fault injection (--inject-refuse)")
        except ChainRefused as e:
            s.totals.refused += 1
            self.metrics.refusals[e.reason] += 1
            s.note_outcome(chain_id, False)
            self.problems.note(
                f"refused:{e.reason}", f"guest {s.guest_id}: chain refused: {e.detail}"
            )
            return UsedMsg(
                chain_id,
                status=codec.REFUSED,
                reason=e.reason,
                detail=e.detail,
                resident_bytes=s.ram.resident_pages() * PAGE_SIZE,
            )
        pages = sum(map(_second, ranges))
        discarded = 0
        if not s.poisoned:
            t0 = time.perf_counter()
            try:
                if self.faults is not None and self.faults.rng.random() < self.faults.discard_error:
                    raise OSError(
                        errno_names.EIO, "injected discard error (--inject-discard-error)"
                    )
                s.ram.discard(ranges)
            except OSError as e:
                return self._discard_failed(s, chain_id, e)
            self.metrics.chain_histogram.observe(time.perf_counter() - t0)
            discarded = pages
        else:
            s.totals.poison_skipped += 1
        # Booked only now, after the discard: a failed chain is not a reported one.
        s.totals.chains += 1
        s.totals.reported_pages += pages
        self.metrics.chains += 1
        s.note_outcome(chain_id, True)
        return UsedMsg(
            chain_id,
            discarded_pages=discarded,
            resident_bytes=s.ram.resident_pages() * PAGE_SIZE,
        )

    def _discard_failed(self, s: Session, chain_id: int, e: OSError) -> UsedMsg:
        code = e.errno or 0
        name = errno_names.errorcode.get(code, str(code))
        s.totals.failed += 1
        self.metrics.failed_chains += 1
        self.metrics.discard_errors[name] += 1
        s.note_outcome(chain_id, False)
        detail = f"discard failed: {name} ({e.strerror or e})"
        self.problems.note(f"discard:{name}", f"guest {s.guest_id}: {detail}")
        return UsedMsg(
            chain_id,
            status=codec.DISCARD_FAILED,
            reason="discard_failed",
            detail=detail,
            errno=code,
            resident_bytes=s.ram.resident_pages() * PAGE_SIZE,
        )

    def refuse(self, reason: str, detail: str = "") -> None:
        """Count a refusal that did not reach a chain's checks (no session, empty message)."""
        self.metrics.refusals[reason] += 1
        self.problems.note(f"refused:{reason}", detail or f"refused: {reason}")

    def handle_touched(self, s: Session, pfns: Sequence[int], counts: Sequence[int]) -> bool:
        """Apply a batch of touched frames; False (counted, nothing applied) if it is bad."""
        return self._touch(s, pfns, counts) is not None

    def answer_touched(
        self,
        s: Session,
        pfns: Sequence[int],
        counts: Sequence[int],
        seq: int = 0,
        evict_ack: int = 0,
    ) -> NoticeMsg | None:
        """Apply a batch of touched frames; for a guest that follows the host's memory
        model, the Notice settling it (every batch gets one, a refused one too: the
        guest may wait for it), carrying what it cost and the guest's evictions.
        ``evict_ack`` first: the frames the guest stopped using move out (shm), and
        this batch's touches, sent after, bring back what they need."""
        if evict_ack and not s.ended:
            self._acknowledged(s, evict_ack)
        if not pfns and seq == 0:
            # An acknowledgement alone: nothing to settle; any news goes by wake.
            self.table.wake_evicted()
            return None
        outcome = self._touch(s, pfns, counts)
        self.table.wake_evicted(s)
        if not s.host_memory or s.ended:
            return None
        if outcome is None:
            outcome = TouchOutcome(0, 0, 0, 0, 0.0)
        evicted, evict_id = s.ram.take_evicted()
        return NoticeMsg(
            evicted=evicted,
            evict_id=evict_id,
            touch_seq=seq,
            delay_us=round(outcome.delay * 1e6),
            major=outcome.major,
            minor=outcome.minor,
        )

    def _acknowledged(self, s: Session, evict_id: int) -> None:
        try:
            if s.ram.acknowledged(evict_id) is None:
                self.refuse(
                    "evict_ack_unknown",
                    f"guest {s.guest_id}: acknowledged eviction {evict_id}, never sent",
                )
        except OSError as e:
            # The swap file could not take them (disk full): their bytes stay in
            # guest RAM, the books say swapped; the kernel's count shows the gap.
            self.refuse("swap_write_failed", f"guest {s.guest_id}: swap-out failed: {e}")

    def _touch(self, s: Session, pfns: Sequence[int], counts: Sequence[int]) -> TouchOutcome | None:
        if len(pfns) != len(counts):
            self.refuse("touched_malformed", f"guest {s.guest_id}: touched arrays differ in length")
            return None
        limit = s.nr_pages
        runs = []
        for pfn, c in zip(pfns, counts, strict=True):
            if c == 0 or pfn + c > limit:
                what = "is empty" if c == 0 else "is outside guest RAM"
                self.refuse(
                    "touched_out_of_range", f"guest {s.guest_id}: touched run {pfn:#x}+{c} {what}"
                )
                return None
            runs.append((pfn, c))
        try:
            outcome = s.ram.touch(runs)
        except OSError as e:
            # The host's memory limit cannot hold the books of these frames (sim:
            # ledger chunks): nothing of the batch was applied.
            self.refuse("touched_no_memory", f"guest {s.guest_id}: touched batch refused: {e}")
            return None
        s.totals.touched_pages += sum(c for _, c in runs)
        self._note_peak(s)
        return outcome

    def _note_peak(self, s: Session) -> None:
        # Residency only rises on touches (a chain only lowers it), and is sampled
        # whenever figures are asked for: the peak is noted there, not per chain.
        s.peak_resident_pages = max(s.peak_resident_pages, s.ram.resident_pages())
        self.note_host_peak()

    def note_host_peak(self) -> int:
        """The host's resident pages now, noted in the peak; returned."""
        resident = self.resident_pages()
        self.metrics.peak_resident_pages = max(self.metrics.peak_resident_pages, resident)
        return resident

    def resident_pages(self) -> int:
        return self.backend.resident_pages_total()
