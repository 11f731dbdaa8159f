"""The balloon device: features, sessions, the checks on every chain, the discard.

The host trusts nothing a guest sends. A chain with a range outside the
guest's RAM, misaligned to its order, of a bad order, overlapping or
duplicating another range of the chain, with more ranges than allowed, or
with mismatched arrays is refused whole (ChainRefused, with a reason that is
counted); nothing is discarded for it, and nothing outside that guest's RAM is
ever touched. Sessions are random 128-bit tokens: a guest can only name its own.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from host.memory.base import GuestRam, MemoryBackend
from pagehint.metrics import LatencyHistogram
from virtqueue import features as F
from virtqueue.codec import GuestFigures, HostFigures

MAX_ORDER = 10
PAGE_SIZE = 4096
MAX_GUEST_RAM = 64 << 30
SUPPORTED = F.mask(F.REPORTING, F.PAGE_POISON)


class ChainRefused(Exception):
    """A chain failed a check. ``reason`` is a short key for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class SessionError(Exception):
    """Unknown or expired session."""


class NegotiationError(Exception):
    """A guest asked for something the device cannot do."""


@dataclass
class Session:
    token: str
    guest_id: str
    ram_bytes: int
    features: int
    poison_val: int
    capacity: int
    ram: GuestRam
    created: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    chains: int = 0
    refused: int = 0
    reported_pages: int = 0
    touched_pages: int = 0
    poison_skipped: int = 0
    peak_resident_pages: int = 0
    streams: int = 0

    @property
    def nr_pages(self) -> int:
        return self.ram_bytes // PAGE_SIZE

    @property
    def poisoned(self) -> bool:
        # With PAGE_POISON and a non-zero value, discarding (which zero-fills) would
        # break the guest's poison checks: QEMU skips the discard in that case.
        return F.has(self.features, F.PAGE_POISON) and self.poison_val != 0


class BalloonDevice:
    def __init__(
        self,
        backend: MemoryBackend,
        queue_size: int = 64,
        max_chain_ranges: int = 512,
        session_timeout: float = 30.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.backend = backend
        self.queue_size = queue_size
        self.max_chain_ranges = max_chain_ranges
        self.session_timeout = session_timeout
        self.sessions: dict[str, Session] = {}
        self.by_guest: dict[str, str] = {}
        self.refusals: Counter[str] = Counter()
        self.chains = 0
        self.peak_resident_pages = 0
        self.chain_histogram = LatencyHistogram()
        self.log = log or (lambda _m: None)

    # ---- sessions ------------------------------------------------------------------

    def negotiate(
        self,
        guest_id: str,
        ram_bytes: int,
        page_size: int,
        offered: int,
        poison_val: int,
        capacity: int,
    ) -> Session:
        if not guest_id or len(guest_id) > 128 or not guest_id.isprintable():
            raise NegotiationError("guest_id must be 1..128 printable characters")
        if page_size != PAGE_SIZE:
            raise NegotiationError(f"page size {page_size} unsupported (only {PAGE_SIZE})")
        if not 0 < ram_bytes <= MAX_GUEST_RAM or ram_bytes % (PAGE_SIZE << MAX_ORDER):
            raise NegotiationError(
                f"RAM size {ram_bytes} must be 4 MiB-aligned and at most {MAX_GUEST_RAM}"
            )
        if not F.has(offered, F.REPORTING):
            raise NegotiationError("the guest did not offer VIRTIO_BALLOON_F_REPORTING")
        if poison_val > 0xFF:
            raise NegotiationError(f"poison value {poison_val} is not a byte")
        old = self.by_guest.get(guest_id)
        if old is not None:
            self.log(f"guest {guest_id} negotiated again: ending its previous session")
            self.end(old, "replaced")
        token = secrets.token_hex(16)
        ram = self.backend.attach(guest_id, ram_bytes // PAGE_SIZE, page_size)
        accepted = offered & SUPPORTED
        s = Session(
            token=token,
            guest_id=guest_id,
            ram_bytes=ram_bytes,
            features=accepted,
            poison_val=poison_val if F.has(accepted, F.PAGE_POISON) else 0,
            capacity=min(capacity or self.max_chain_ranges, self.max_chain_ranges),
            ram=ram,
        )
        self.sessions[token] = s
        self.by_guest[guest_id] = token
        self.log(
            f"guest {guest_id} negotiated: {ram_bytes >> 20} MiB, features {F.describe(accepted)}"
        )
        return s

    def session(self, token: str) -> Session:
        s = self.sessions.get(token)
        if s is None:
            raise SessionError("unknown or expired session")
        s.last_seen = time.monotonic()
        return s

    def end(self, token: str, why: str) -> None:
        s = self.sessions.pop(token, None)
        if s is None:
            return
        if self.by_guest.get(s.guest_id) == token:
            del self.by_guest[s.guest_id]
        s.ram.release()
        self.log(f"session of guest {s.guest_id} ended ({why})")

    def expire(self, now: float | None = None) -> list[str]:
        """End sessions idle past the timeout with no stream open."""
        now = time.monotonic() if now is None else now
        gone = [
            t
            for t, s in self.sessions.items()
            if s.streams == 0 and now - s.last_seen > self.session_timeout
        ]
        for t in gone:
            self.end(t, "timed out")
        return gone

    # ---- the reporting queue ---------------------------------------------------------

    def check_chain(
        self, s: Session, pfns: Sequence[int], orders: Sequence[int]
    ) -> list[tuple[int, int]]:
        """Validate a chain; returns its ranges as (pfn, npages) sorted by pfn."""
        if len(pfns) != len(orders):
            raise ChainRefused(
                "malformed", f"{len(pfns)} pfns but {len(orders)} orders: arrays must match"
            )
        if not pfns:
            raise ChainRefused("empty", "a chain must carry at least one range")
        if len(pfns) > s.capacity:
            raise ChainRefused(
                "too_many_ranges", f"{len(pfns)} ranges exceed the negotiated capacity {s.capacity}"
            )
        limit = s.nr_pages
        ranges: list[tuple[int, int]] = []
        for i, (pfn, order) in enumerate(zip(pfns, orders, strict=True)):
            if order > MAX_ORDER:
                raise ChainRefused("bad_order", f"range {i}: order {order} is above {MAX_ORDER}")
            n = 1 << order
            if pfn & (n - 1):
                raise ChainRefused(
                    "misaligned", f"range {i}: pfn {pfn:#x} is not aligned to order {order}"
                )
            if pfn + n > limit:
                raise ChainRefused(
                    "out_of_range",
                    f"range {i}: pfn {pfn:#x} order {order} is outside guest RAM ({limit} pages)",
                )
            ranges.append((pfn, n))
        ranges.sort()
        for (a, an), (b, _bn) in itertools.pairwise(ranges):
            if b < a + an:
                kind = "duplicate" if a == b else "overlap"
                raise ChainRefused(kind, f"ranges at pfn {a:#x} and {b:#x} {kind}")
        return ranges

    def handle_report(self, s: Session, pfns: Sequence[int], orders: Sequence[int]) -> int:
        """Check and discard one chain; returns pages discarded. Raises ChainRefused."""
        try:
            ranges = self.check_chain(s, pfns, orders)
        except ChainRefused as e:
            s.refused += 1
            self.refusals[e.reason] += 1
            self.log(f"guest {s.guest_id}: chain refused: {e.detail}")
            raise
        pages = sum(n for _, n in ranges)
        s.chains += 1
        self.chains += 1
        s.reported_pages += pages
        if s.poisoned:
            s.poison_skipped += 1
            return 0
        t0 = time.perf_counter()
        s.ram.discard(ranges)
        self.chain_histogram.observe(time.perf_counter() - t0)
        return pages

    def refuse(self, reason: str) -> None:
        """Count a refusal that happened before a chain reached a session (e.g. no session)."""
        self.refusals[reason] += 1

    def handle_touched(self, s: Session, pfns: Sequence[int], counts: Sequence[int]) -> None:
        if len(pfns) != len(counts):
            raise ChainRefused("malformed", "touched: pfn and count arrays differ in length")
        limit = s.nr_pages
        runs = []
        for pfn, c in zip(pfns, counts, strict=True):
            if c == 0 or pfn + c > limit:
                raise ChainRefused("out_of_range", f"touched run {pfn:#x}+{c} is outside guest RAM")
            runs.append((pfn, c))
        s.ram.touched(runs)
        s.touched_pages += sum(c for _, c in runs)
        self._note_peak(s)

    def _note_peak(self, s: Session) -> None:
        # Residency only rises on touches (a chain only lowers it), and is sampled
        # whenever figures are asked for: the peak is noted there, not per chain.
        s.peak_resident_pages = max(s.peak_resident_pages, s.ram.resident_pages())
        self.peak_resident_pages = max(self.peak_resident_pages, self.resident_pages())

    def resident_pages(self) -> int:
        return self.backend.resident_pages_total()

    def touch_session(self, s: Session) -> None:
        s.last_seen = time.monotonic()

    # ---- figures -----------------------------------------------------------------------

    def figures(self, s: Session) -> GuestFigures:
        ps = PAGE_SIZE
        resident = s.ram.resident_pages()
        s.peak_resident_pages = max(s.peak_resident_pages, resident)
        return GuestFigures(
            guest_id=s.guest_id,
            ram_bytes=s.ram_bytes,
            resident_bytes=resident * ps,
            lazily_free_bytes=s.ram.lazily_free_pages() * ps,
            discarded_bytes=(s.nr_pages - resident) * ps,
            reported_bytes=s.reported_pages * ps,
            chains=s.chains,
            refused_chains=s.refused,
            touched_bytes=s.touched_pages * ps,
            poison_skipped_chains=s.poison_skipped,
            peak_resident_bytes=s.peak_resident_pages * ps,
            measured_by_kernel=s.ram.measured_by_kernel,
        )

    def host_figures(self, self_guest: GuestFigures | None = None) -> HostFigures:
        resident = self.resident_pages()
        self.peak_resident_pages = max(self.peak_resident_pages, resident)
        cap = self.backend.capacity_pages
        return HostFigures(
            guests=[self.figures(s) for s in self.sessions.values()],
            capacity_bytes=(cap or 0) * PAGE_SIZE,
            resident_bytes=resident * PAGE_SIZE,
            peak_resident_bytes=self.peak_resident_pages * PAGE_SIZE,
            reclaimed_bytes=self.backend.reclaimed * PAGE_SIZE,
            chains=self.chains,
            refused_chains=sum(self.refusals.values()),
            refusals=dict(self.refusals),
            backend=self.backend.name,
            self_guest=self_guest,
        )
