"""The balloon device: features, sessions, the checks on every chain, the discard.

The host trusts nothing a guest sends. A chain with a range outside the
guest's RAM, misaligned to its order, of a bad order, overlapping or
duplicating another range of the chain, with more ranges than allowed, or
with mismatched arrays is refused whole, before anything of it is discarded,
and the refusal is counted by reason; nothing outside that guest's RAM is ever
touched. Every chain gets exactly one answer (a ``UsedMsg``): DONE, REFUSED
with the rule it broke, or DISCARD_FAILED with the errno. The stream survives
all three: a refused chain is the guest's problem, not the connection's.

Sessions are random 128-bit tokens: a guest can only name its own. When a
guest's stream breaks it negotiates again naming its previous session, and the
device *fences* it (``fence``): the old session is ended, so none of its chains
can be discarded any more, and the guest is told which of its chains were DONE.
Discards run synchronously on the event loop, and ``handle_report`` checks that
its session is still live immediately before discarding: once a session is
marked ended, no discard of it can start. So the fence completes at once; were
discards ever moved off the loop, ``fence`` would have to wait for them.

A fenced session is spent once the session that fenced it has been used: naming
it again (an older copy of the guest: a clone, a process paused meanwhile) is
refused however long the newer one has been silent; while the newer one was
never used, naming the old one again is the guest retrying a negotiation whose
answer was lost, and is let through. Every refusal that tells a client another
process holds its guest id for good ends "this one gives way" (GIVES_WAY), and
says how it was lost. Sessions are also counted per client address, and one
address holds at most ``max_sessions_per_peer`` of them.

With ``--host-memory`` (host/memory/hostmem.py) a guest that offered
``host_memory`` gets a Notice for every Touched batch (``answer_touched``: its seq,
the wait its faults and the writeback they forced cost, its evicted frames), and
hears of evictions other guests caused on its own stream (``wake_evicted``; the
service writes them). A guest that did not offer it is held but never swapped. A
guest bigger than the host's memory and swap is refused (``TooBig``,
RESOURCE_EXHAUSTED); the OOM killer's victim has its session ended with the
kill's reason (``_oom_killed``), which its stream ends with (ABORTED).

Counts (chains, bytes reported, refusals, failures) belong to a guest's line
of sessions: a session that fences its predecessor takes over its totals, and
a fresh negotiation (a new guest process, even with an id used before) starts
from zero. So guest and host can compare totals after any number of reconnects.
"""

from __future__ import annotations

import asyncio
import errno as errno_names
import functools
import itertools
import operator
import random
import secrets
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from host.memory.base import GuestRam, MemoryBackend
from host.memory.hostmem import Kill, TouchOutcome
from pagehint.logging import debug_of
from pagehint.ratelog import RateLimitedLog
from pagehint.stats import LatencyHistogram
from virtqueue import codec
from virtqueue import features as F
from virtqueue.codec import Fence, GuestFigures, HostFigures, NoticeMsg, UsedMsg
from virtqueue.contract import MAX_ORDER, PAGE_SIZE, guest_id_problem, ram_size_problem

T = TypeVar("T")
_second = operator.itemgetter(1)
_SIZES = tuple(1 << o for o in range(MAX_ORDER + 1))  # pages in a block of each order
SUPPORTED = F.mask(F.REPORTING, F.PAGE_POISON)
# Ended sessions whose chain outcomes and totals are kept for a late fence:
# bounded, oldest dropped.
ENDED_SESSIONS_KEPT = 1024


def _ascending_disjoint(
    pairs: Iterable[tuple[int, int]],
) -> tuple[list[tuple[int, int]], int] | None:
    """(ranges as (pfn, npages), end of the last) if every (pfn, order) is aligned and
    starts at or after the previous one's end; None otherwise. IndexError for an
    order above MAX_ORDER."""
    sizes = _SIZES
    ranges: list[tuple[int, int]] = []
    append = ranges.append
    end = 0
    for pfn, order in pairs:
        size = sizes[order]
        if pfn < end or pfn & (size - 1):
            return None
        end = pfn + size
        append((pfn, size))
    return ranges, end


class ChainRefused(Exception):
    """A chain failed a check. ``reason`` is a short key for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class SessionError(Exception):
    """Unknown or expired session."""


class SessionKilled(SessionError):
    """The session was ended by the host's OOM killer: a later call of it is told
    so (ABORTED with the reason), not "unknown", or its guest would negotiate
    again and be killed again."""


class NegotiationError(Exception):
    """A guest asked for something the device cannot do."""


class NotPermitted(NegotiationError):
    """The caller may not act as that guest (identity mismatch, someone else's session)."""


class SessionInUse(NegotiationError):
    """The guest id has a live session that the caller does not hold."""


class LimitReached(NegotiationError):
    """The host cannot take another session now (its limit, or out of resources)."""


class PeerLimitReached(LimitReached):
    """The client's address holds as many sessions as one address may."""


class TooBig(LimitReached):
    """The guest's RAM and VMM could never fit the host's memory and swap."""


# A session with no stream open and no call for this long is no longer "live":
# a new guest process with the same id may take its place (its guest crashed).
STALE_AFTER = 5.0
# How every refusal that means "another process has this guest's id; stop" ends
# (ALREADY_EXISTS): the guest tells it from a live session's refusal, which it retries.
GIVES_WAY = "; this one gives way"
_TURN_AWAY_REASONS: dict[type[NegotiationError], str] = {
    SessionInUse: "in_use",
    LimitReached: "session_limit",
    PeerLimitReached: "peer_limit",
    TooBig: "too_big",
    NotPermitted: "not_permitted",
}


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


@dataclass
class GuestTotals:
    """One guest's counts across its line of sessions (each fencing the one before)."""

    chains: int = 0
    refused: int = 0
    failed: int = 0
    reported_pages: int = 0
    touched_pages: int = 0
    poison_skipped: int = 0
    sessions: int = 0


@dataclass
class Session:
    token: str
    guest_id: str
    ram_bytes: int
    features: int
    poison_val: int
    capacity: int
    ram: GuestRam
    totals: GuestTotals
    queue_size: int = 64
    last_seen: float = field(default_factory=time.monotonic)
    peak_resident_pages: int = 0
    streams: int = 0
    ended: bool = False
    # Reporting handlers of this session: ending the session cancels them, so an
    # expired or fenced session's idle stream does not linger.
    stream_tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # Outcomes of the most recent chains (id, DONE?): what a fence reports.
    recent: deque[tuple[int, bool]] = field(default_factory=deque)
    # The client's address (per-peer quota; "" for in-process callers: none).
    peer: str = ""
    # Named by a call since it was opened: its holder has its token. A session that
    # never was may be one whose negotiation's answer was lost (see _check_takeover).
    used: bool = False
    # Follows the host's memory model (--host-memory, and the guest offered it): its
    # touches are answered with Notices, and it hears of its frames' evictions.
    host_memory: bool = False
    # Why the OOM killer ended it (its stream ends ABORTED with this); "" otherwise.
    killed: str = ""
    # Its Reporting streams' wake-ups: set when the host has something to tell it
    # that answers no message of its own (evictions caused by other guests).
    wakes: set[asyncio.Event] = field(default_factory=set)

    def wake(self) -> None:
        for w in self.wakes:
            w.set()

    @property
    def nr_pages(self) -> int:
        return self.ram_bytes // PAGE_SIZE

    @functools.cached_property
    def poisoned(self) -> bool:
        # With PAGE_POISON and a non-zero value, discarding (which zero-fills) would
        # break the guest's poison checks: QEMU skips the discard in that case.
        return F.has(self.features, F.PAGE_POISON) and self.poison_val != 0

    def note_outcome(self, chain_id: int, done: bool) -> None:
        # At most queue-size chains are outstanding, so twice that many outcomes
        # cover every chain a broken stream can have left unanswered.
        self.recent.append((chain_id, done))
        if len(self.recent) > 2 * self.queue_size:
            self.recent.popleft()

    def done_ids(self) -> frozenset[int]:
        return frozenset(i for i, done in self.recent if done)


def _remember(table: OrderedDict[str, T], key: str, value: T) -> None:
    """Add to a record of ended sessions, bounded like ``ended`` (oldest dropped)."""
    table[key] = value
    table.move_to_end(key)
    while len(table) > ENDED_SESSIONS_KEPT:
        table.popitem(last=False)


def _check_offer(
    guest_id: str, ram_bytes: int, page_size: int, offered: int, poison_val: int
) -> None:
    """What a guest offers at negotiation, checked against the contract."""
    if guest_id_problem(guest_id) is not None:
        raise NegotiationError("guest_id must be 1..128 printable characters")
    if page_size != PAGE_SIZE:
        raise NegotiationError(f"page size {page_size} unsupported (only {PAGE_SIZE})")
    problem = ram_size_problem(ram_bytes)  # the guest's own rule (virtqueue/contract.py)
    if problem is not None:
        raise NegotiationError(problem)
    if not F.has(offered, F.REPORTING):
        raise NegotiationError("the guest did not offer VIRTIO_BALLOON_F_REPORTING")
    if poison_val > 0xFF:
        raise NegotiationError(f"poison value {poison_val} is not a byte")


class BalloonDevice:
    def __init__(
        self,
        backend: MemoryBackend,
        queue_size: int = 64,
        max_chain_ranges: int = 512,
        session_timeout: float = 30.0,
        log: Callable[[str], None] | None = None,
        min_order: int = 0,
        faults: Faults | None = None,
        max_sessions: int = 1024,
        max_sessions_per_peer: int | None = None,
    ) -> None:
        self.backend = backend
        self.queue_size = queue_size
        self.max_chain_ranges = max_chain_ranges
        self.session_timeout = session_timeout
        self.min_order = min_order
        self.max_sessions = max_sessions
        # Most sessions one client address may hold (None: only max_sessions).
        self.max_sessions_per_peer = max_sessions_per_peer
        self.faults = faults if faults is not None and faults.active else None
        self.instance = secrets.token_hex(8)
        self.sessions: dict[str, Session] = {}
        self.by_guest: dict[str, str] = {}
        # Sessions the OOM killer ended (token -> reason), the newest kept.
        self.killed: OrderedDict[str, str] = OrderedDict()
        # token -> (guest id, ids of its chains that were DONE, its totals), for late fences.
        self.ended: OrderedDict[str, tuple[str, frozenset[int], GuestTotals]] = OrderedDict()
        # Sessions another client took over, and how: their old holder may not take
        # the id back (two processes would evict each other).
        self.taken_over: OrderedDict[str, str] = OrderedDict()
        # Fenced session -> the session that fenced it (its guest's next). Naming a
        # fenced session again is its guest retrying a negotiation whose answer was
        # lost, only while that next session has not been used.
        self.resumed_by: OrderedDict[str, Session] = OrderedDict()
        # Sessions held per client address (the per-peer quota).
        self.per_peer: Counter[str] = Counter()
        # Negotiations turned away, by reason (limits, quotas, penalties).
        self.turned_away: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self.discard_errors: Counter[str] = Counter()
        self.chains = 0
        self.failed_chains = 0
        self.peak_resident_pages = 0
        self.chain_histogram = LatencyHistogram()
        self.log = log or (lambda _m: None)
        self._debug = debug_of(log)  # -v: a line per chain
        # One line per reason per interval, however many chains are refused.
        self.problems = RateLimitedLog(self.log)
        if backend.model is not None:
            backend.model.on_kill = self._oom_killed

    # ---- sessions ------------------------------------------------------------------

    def negotiate(
        self,
        guest_id: str,
        ram_bytes: int,
        page_size: int,
        offered: int,
        poison_val: int,
        capacity: int,
        previous_session: str = "",
        identity: str | None = None,
        peer: str = "",
        host_memory: bool = False,
    ) -> tuple[Session, Fence | None]:
        """Open a session; with ``previous_session``, fence that one first.

        ``identity`` is who the caller proved to be (its certificate's name, or the
        guest id its token belongs to); None when the host checks no identity.
        A guest id with a live session is taken over only by the holder of that
        session (naming it as previous) or by the same proven identity.
        ``peer`` is the client's address, for the per-peer quota ("": none).
        ``host_memory``: the guest offered to follow the host's memory model (it
        does only if the host has one).
        """
        _check_offer(guest_id, ram_bytes, page_size, offered, poison_val)
        if identity is not None and identity != guest_id:
            raise NotPermitted(f"this client may act only as guest {identity!r}, not {guest_id!r}")
        follows = host_memory and self.backend.model is not None
        ram = self._admit(guest_id, ram_bytes, page_size, previous_session, identity, peer, follows)
        fence, totals = None, GuestTotals()
        if previous_session:
            try:
                fence = self.fence(guest_id, previous_session)
            except NegotiationError:
                ram.release()
                raise
            if fence.known:
                totals = self.ended[previous_session][2]
        self._end_replaced(guest_id, previous_session, identity)
        accepted = offered & SUPPORTED
        totals.sessions += 1
        s = Session(
            token=secrets.token_hex(16),
            guest_id=guest_id,
            ram_bytes=ram_bytes,
            features=accepted,
            poison_val=poison_val if F.has(accepted, F.PAGE_POISON) else 0,
            capacity=min(capacity or self.max_chain_ranges, self.max_chain_ranges),
            ram=ram,
            totals=totals,
            queue_size=self.queue_size,
            peer=peer,
            host_memory=follows,
        )
        self._open(s, previous_session)
        return s, fence

    def _open(self, s: Session, previous_session: str) -> None:
        """Book a new session (its negotiation passed) and say so."""
        self.sessions[s.token] = s
        self.by_guest[s.guest_id] = s.token
        if s.peer:
            self.per_peer[s.peer] += 1
        if previous_session:
            _remember(self.resumed_by, previous_session, s)
        model = ", host memory model" if s.host_memory else ""
        features = F.describe(s.features)
        self.log(
            f"guest {s.guest_id} negotiated: {s.ram_bytes >> 20} MiB, features {features}{model}"
        )
        self.wake_evicted()  # its VMM's overhead may have pushed others' frames out

    def _admit(
        self,
        guest_id: str,
        ram_bytes: int,
        page_size: int,
        previous_session: str,
        identity: str | None,
        peer: str,
        host_memory: bool = False,
    ) -> GuestRam:
        """May this caller have a session now, and is there room: its RAM, or raise."""
        try:
            self._check_takeover(guest_id, previous_session, identity)
            self._check_limits(guest_id, peer)
            self._check_fits(ram_bytes)
        except NegotiationError as e:
            self._turn_away(e, guest_id, peer)
            raise
        try:
            # Before the fence: a failure here must leave the caller's old session untouched.
            nr_pages = ram_bytes // PAGE_SIZE
            # (host_memory given only when true: a backend written before the model
            # takes three arguments, and a host without the model never passes it.)
            if host_memory:
                ram = self.backend.attach(guest_id, nr_pages, page_size, host_memory=True)
            else:
                ram = self.backend.attach(guest_id, nr_pages, page_size)
        except OSError as e:
            # The detail (a path, an errno) is for the host's log, not for the client.
            self.problems.note(f"attach:{e.errno}", f"guest {guest_id}: cannot hold its RAM: {e}")
            self.turned_away["no_room"] += 1
            raise LimitReached("the host cannot hold another guest's RAM now") from None
        if ram.killed:  # its own VMM's overhead made it the OOM killer's victim
            self.turned_away["no_room"] += 1
            raise LimitReached("the host's OOM killer took this guest as it started")
        return ram

    def _check_fits(self, ram_bytes: int) -> None:
        """A guest bigger than the host's memory and swap together could never be held:
        refused (RESOURCE_EXHAUSTED) rather than started and killed."""
        model = self.backend.model
        if model is None or model.fits(ram_bytes // PAGE_SIZE):
            return
        raise TooBig(
            f"guest RAM {ram_bytes >> 20} MiB + VMM overhead "
            f"{model.overhead_pages * PAGE_SIZE >> 20} MiB exceeds the host's memory "
            f"{model.memory_pages * PAGE_SIZE >> 20} MiB + swap "
            f"{model.swap_pages * PAGE_SIZE >> 20} MiB"
        )

    def _check_takeover(self, guest_id: str, previous_session: str, identity: str | None) -> None:
        """May this caller open a session for ``guest_id`` now? Raise if not.

        Every refusal that means "another process has this guest's id now; stop"
        ends in GIVES_WAY (ALREADY_EXISTS, as a live session's refusal, which is
        retried: a crashed predecessor's session goes stale within seconds)."""
        old = self.by_guest.get(guest_id)
        if old is not None and previous_session in self.taken_over:
            raise SessionInUse(
                f"guest id {guest_id!r} was taken over by another client "
                f"{self.taken_over[previous_session]}{GIVES_WAY}"
            )
        nxt = self.resumed_by.get(previous_session) if previous_session else None
        if nxt is not None and nxt.used:
            # The session named was fenced by a newer one its guest has used since: the
            # caller is an older copy of that guest (a clone, a process that was
            # paused), however long the newer one has been silent.
            raise SessionInUse(
                f"guest id {guest_id!r}: the session named was resumed already, by a "
                f"newer session of its guest{GIVES_WAY}"
            )
        # Naming the fenced session again while its successor was never used: the
        # answer that carried the successor was lost, and nobody else holds it.
        retrying = nxt is not None and nxt.token == old
        if old is not None and old != previous_session and identity is None and not retrying:
            live = self.sessions[old]
            if live.streams or time.monotonic() - live.last_seen < STALE_AFTER:
                raise SessionInUse(
                    f"guest id {guest_id!r} has a live session; resume it (previous_session) "
                    "or use another id"
                )

    def _check_limits(self, guest_id: str, peer: str) -> None:
        """Room for one more session (all clients, then this client's address)?"""
        old = self.by_guest.get(guest_id)
        if old is None and len(self.sessions) >= self.max_sessions:
            raise LimitReached(f"the host is at its limit of {self.max_sessions} sessions")
        quota = self.max_sessions_per_peer
        if not peer or quota is None:
            return
        held = self.per_peer[peer]
        if old is not None and self.sessions[old].peer == peer:
            held -= 1  # the session this one replaces
        if held >= quota:
            raise PeerLimitReached(
                f"this client's address is at its limit of {quota} sessions "
                f"(of the host's {self.max_sessions})"
            )

    def _turn_away(self, e: NegotiationError, guest_id: str, peer: str) -> None:
        """Count a refused negotiation; log the limits (rate-limited) but not the
        take-over refusals, which a reconnecting guest meets in passing."""
        reason = _TURN_AWAY_REASONS.get(type(e), "refused")
        self.turned_away[reason] += 1
        if isinstance(e, LimitReached):
            self.problems.note(
                f"turned_away:{reason}",
                f"{peer or 'a client'}: negotiation as {guest_id!r} refused: {e}",
            )

    def _end_replaced(self, guest_id: str, previous_session: str, identity: str | None) -> None:
        """End the guest id's current session, remembering a take-over."""
        old = self.by_guest.get(guest_id)
        if old is None:
            return
        self.log(f"guest {guest_id} negotiated again: ending its previous session")
        self.end(old, "replaced")
        if old == previous_session:
            return
        nxt = self.resumed_by.get(previous_session) if previous_session else None
        if nxt is not None and nxt.token == old:  # a lost answer's retry (_check_takeover)
            how = "that resumed the same session before this one used its own"
        elif identity is not None:
            how = "with the same identity"
        else:
            how = f"after this one was silent for {STALE_AFTER:g} s (the host checks no identity)"
        _remember(self.taken_over, old, how)

    def accepted(self, s: Session, fence: Fence | None) -> codec.Accepted:
        """The negotiation's answer for a new session."""
        return codec.Accepted(
            features=s.features,
            queue_size=self.queue_size,
            max_chain_ranges=s.capacity,
            session=s.token,
            backend=self.backend.name,
            shm_path=s.ram.shm_path,
            discard=self.backend.discard_mode,
            min_order=self.min_order,
            fence=fence,
            instance=self.instance,
            session_timeout_ms=min(int(self.session_timeout * 1000), 2**32 - 1),
            host_memory=s.host_memory,
        )

    def fence(self, guest_id: str, token: str) -> Fence:
        """End ``token`` (if still open) so none of its chains can be discarded any more,
        and say which of its chains were DONE."""
        s = self.sessions.get(token)
        if s is not None:
            if s.guest_id != guest_id:
                raise NegotiationError("previous_session belongs to another guest")
            self.end(token, "fenced by its guest's new session")
        record = self.ended.get(token)
        if record is None or record[0] != guest_id:
            return Fence(known=False)
        return Fence(known=True, done_ids=record[1])

    def session(self, token: str) -> Session:
        s = self.sessions.get(token)
        if s is None:
            killed = self.killed.get(token)
            if killed is not None:
                raise SessionKilled(killed)
            raise SessionError("unknown or expired session")
        s.last_seen = time.monotonic()
        s.used = True
        return s

    def end(self, token: str, why: str) -> None:
        s = self.sessions.pop(token, None)
        if s is None:
            return
        s.ended = True  # from here on, handle_report discards nothing for it
        for task in s.stream_tasks:
            task.cancel()
        if self.by_guest.get(s.guest_id) == token:
            del self.by_guest[s.guest_id]
        if s.peer:
            self.per_peer[s.peer] -= 1
            if self.per_peer[s.peer] <= 0:
                del self.per_peer[s.peer]
        self.ended[token] = (s.guest_id, s.done_ids(), s.totals)
        while len(self.ended) > ENDED_SESSIONS_KEPT:
            self.ended.popitem(last=False)
        s.ram.release()
        self.log(f"session of guest {s.guest_id} ended ({why})")

    def expire(self, now: float | None = None) -> list[str]:
        """End sessions with no call for longer than the timeout, stream open or not.

        A live guest calls Stats several times a second, so only dead or silent
        ones expire; an idle stream held open does not keep a session alive.
        """
        now = time.monotonic() if now is None else now
        gone = [t for t, s in self.sessions.items() if now - s.last_seen > self.session_timeout]
        for t in gone:
            self.end(t, "timed out")
        return gone

    # ---- the reporting queue ---------------------------------------------------------

    def check_chain(
        self, s: Session, pfns: Sequence[int], orders: Sequence[int]
    ) -> list[tuple[int, int]]:
        """Validate a chain; returns its ranges as (pfn, npages) sorted by pfn.

        This runs once per chain on the host's only thread, so the passing case
        is one sort and one tight loop; only a failing chain is walked again,
        range by range, to name the first rule it broke.
        """
        n = len(pfns)
        if n != len(orders):
            raise ChainRefused("malformed", f"{n} pfns but {len(orders)} orders: arrays must match")
        if not n:
            raise ChainRefused("empty", "a chain must carry at least one range")
        if n > s.capacity:
            raise ChainRefused(
                "too_many_ranges", f"{n} ranges exceed the negotiated capacity {s.capacity}"
            )
        # Guests send their ranges in ascending pfn order (the driver sorts them), so
        # one tight pass in the order given usually settles it; a chain that is not
        # ascending is sorted and passed again. Failure re-walks it to name the rule.
        try:
            found = _ascending_disjoint(zip(pfns, orders, strict=True))
            if found is None:
                found = _ascending_disjoint(sorted(zip(pfns, orders, strict=True)))
        except IndexError:  # an order above MAX_ORDER
            found = None
        if found is not None and found[1] <= s.nr_pages and min(orders) >= self.min_order:
            return found[0]
        self._name_broken_rule(s, pfns, orders)

    def _name_broken_rule(self, s: Session, pfns: Sequence[int], orders: Sequence[int]) -> NoReturn:
        """Walk a chain that failed the fast check; raise for the first rule it breaks."""
        limit = s.nr_pages
        for i, (pfn, order) in enumerate(zip(pfns, orders, strict=True)):
            if order > MAX_ORDER:
                raise ChainRefused("bad_order", f"range {i}: order {order} is above {MAX_ORDER}")
            if order < self.min_order:
                raise ChainRefused(
                    "below_min_order",
                    f"range {i}: order {order} is below the device's {self.min_order}",
                )
            n = 1 << order
            if pfn & (n - 1):
                raise ChainRefused(
                    "misaligned", f"range {i}: pfn {pfn:#x} is not aligned to order {order}"
                )
            if pfn < 0 or pfn + n > limit:  # (negative: only from in-process callers)
                raise ChainRefused(
                    "out_of_range",
                    f"range {i}: pfn {pfn:#x} order {order} is outside guest RAM ({limit} pages)",
                )
        ordered = sorted((pfn, 1 << order) for pfn, order in zip(pfns, orders, strict=True))
        for (a, an), (b, _bn) in itertools.pairwise(ordered):
            if b < a + an:
                kind = "duplicate" if a == b else "overlap"
                raise ChainRefused(kind, f"ranges at pfn {a:#x} and {b:#x} {kind}")
        raise AssertionError("a chain that fails the array checks has a bad range")

    def handle_report(
        self, s: Session, chain_id: int, pfns: Sequence[int], orders: Sequence[int]
    ) -> UsedMsg | None:
        """Check and discard one chain; its answer, or None if its session has ended
        (a fence cancelled it: nothing was discarded, and nobody is listening)."""
        used = self._handle_report(s, chain_id, pfns, orders)
        if self._debug is not None and used is not None:
            why = f" ({used.reason})" if used.reason else ""
            self._debug(
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
            ranges = self.check_chain(s, pfns, orders)
            if self.faults is not None and self.faults.rng.random() < self.faults.refuse:
                raise ChainRefused("injected", "refused by fault injection (--inject-refuse)")
        except ChainRefused as e:
            s.totals.refused += 1
            self.refusals[e.reason] += 1
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
            self.chain_histogram.observe(time.perf_counter() - t0)
            discarded = pages
        else:
            s.totals.poison_skipped += 1
        # Booked only now, after the discard: a failed chain is not a reported one.
        s.totals.chains += 1
        s.totals.reported_pages += pages
        self.chains += 1
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
        self.failed_chains += 1
        self.discard_errors[name] += 1
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
        self.refusals[reason] += 1
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
            self.wake_evicted()
            return None
        outcome = self._touch(s, pfns, counts)
        self.wake_evicted(s)
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
            s.ram.acknowledged(evict_id)
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

    def wake_evicted(self, current: Session | None = None) -> None:
        """Tell the streams of guests whose frames the model evicted (other than
        ``current``, whose own Notice carries them) that a Notice waits."""
        model = self.backend.model
        if model is None or not model.dirty:
            return
        for g in list(model.dirty):
            token = self.by_guest.get(g.guest_id)
            s = self.sessions.get(token) if token is not None else None
            if s is None or getattr(s.ram, "memory", None) is not g:
                model.dirty.pop(g, None)  # no session of it to tell (cannot happen)
            elif s is not current:
                s.wake()

    def _oom_killed(self, kill: Kill) -> None:
        """The model's OOM killer took a guest: its session ends, its stream with
        ABORTED and the reason (host/service.py)."""
        reason = kill.reason()
        for token, s in list(self.sessions.items()):
            if getattr(s.ram, "memory", None) is kill.guest:
                s.killed = reason
                self.killed[token] = reason
                while len(self.killed) > ENDED_SESSIONS_KEPT:
                    self.killed.popitem(last=False)
                self.end(token, reason)
                return
        self.log(f"guest {kill.guest.guest_id} starting: {reason}")

    def _note_peak(self, s: Session) -> None:
        # Residency only rises on touches (a chain only lowers it), and is sampled
        # whenever figures are asked for: the peak is noted there, not per chain.
        s.peak_resident_pages = max(s.peak_resident_pages, s.ram.resident_pages())
        self.peak_resident_pages = max(self.peak_resident_pages, self.resident_pages())

    def note_host_peak(self) -> None:
        self.peak_resident_pages = max(self.peak_resident_pages, self.resident_pages())

    def resident_pages(self) -> int:
        return self.backend.resident_pages_total()

    # ---- figures -----------------------------------------------------------------------

    def figures(self, s: Session) -> GuestFigures:
        ps = PAGE_SIZE
        resident = s.ram.resident_pages()
        s.peak_resident_pages = max(s.peak_resident_pages, resident)
        t = s.totals
        swapped = s.ram.swapped_pages()
        major, minor = s.ram.faults()
        return GuestFigures(
            guest_id=s.guest_id,
            ram_bytes=s.ram_bytes,
            resident_bytes=resident * ps,
            lazily_free_bytes=s.ram.lazily_free_pages() * ps,
            # Not held in memory nor in swap (swapped frames are the guest's still).
            discarded_bytes=(s.nr_pages - resident - swapped) * ps,
            reported_bytes=t.reported_pages * ps,
            chains=t.chains,
            refused_chains=t.refused,
            touched_bytes=t.touched_pages * ps,
            poison_skipped_chains=t.poison_skipped,
            peak_resident_bytes=s.peak_resident_pages * ps,
            measured_by_kernel=s.ram.measured_by_kernel,
            failed_chains=t.failed,
            sessions=t.sessions,
            swapped_bytes=swapped * ps,
            major_faults=major,
            minor_faults=minor,
        )

    def own_figures(self, self_guest: GuestFigures) -> HostFigures:
        """What a caller not authorised for every guest sees: its own guest only."""
        return HostFigures(
            guests=[],
            capacity_bytes=0,
            resident_bytes=0,
            peak_resident_bytes=0,
            reclaimed_bytes=0,
            chains=0,
            refused_chains=0,
            backend=self.backend.name,
            self_guest=self_guest,
            instance=self.instance,
        )

    def host_figures(self, self_guest: GuestFigures | None = None) -> HostFigures:
        resident = self.resident_pages()
        self.peak_resident_pages = max(self.peak_resident_pages, resident)
        cap = self.backend.capacity_pages
        model = self.backend.model
        reclaimed = self.backend.reclaimed if model is None else model.lazy_reclaimed
        return HostFigures(
            guests=[self.figures(s) for s in self.sessions.values()],
            capacity_bytes=(cap or 0) * PAGE_SIZE,
            resident_bytes=resident * PAGE_SIZE,
            peak_resident_bytes=self.peak_resident_pages * PAGE_SIZE,
            reclaimed_bytes=reclaimed * PAGE_SIZE,
            chains=self.chains,
            refused_chains=sum(self.refusals.values()),
            refusals=dict(self.refusals),
            backend=self.backend.name,
            self_guest=self_guest,
            failed_chains=self.failed_chains,
            discard_errors=dict(self.discard_errors),
            instance=self.instance,
            **self._model_figures(),
        )

    def _model_figures(self) -> dict[str, int]:
        """The host memory model's figures (HostFigures fields; none without it)."""
        m = self.backend.model
        if m is None:
            return {}
        return {
            "host_memory_bytes": m.memory_pages * PAGE_SIZE,
            "swap_bytes": m.swap_pages * PAGE_SIZE,
            "swap_used_bytes": m.swap_used * PAGE_SIZE,
            "swap_ins": m.swap_ins,
            "swap_outs": m.swap_outs,
            "oom_kills": m.oom_kills,
            "vmm_overhead_bytes": m.overhead_pages * PAGE_SIZE,
        }
