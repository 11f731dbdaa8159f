"""The host's session table: who may open a session, and its life.

A guest negotiates a session (``negotiate``): its offer is checked against the
contract, the caller against the guest id (a live session of that id is taken
over only by its holder or the same proven identity: ``check_takeover``), the
host's limits and the client's quota (``check_limits``), and, with the host's
memory model, the guest's size against memory and swap (``check_fits``). A
session naming its predecessor *fences* it (``fence``): the old one is ended,
so none of its chains can be discarded any more, and the guest is told which of
them were DONE. Sessions with no call for ``session_timeout`` expire; the OOM
killer's victim is ended with the kill's reason, which later calls of it are
told (``SessionKilled``). Counts belong to a guest's line of sessions
(``GuestTotals``): a session that fences its predecessor takes over its totals.

What a session's chains and touches do is the device's (host/device.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from host.balloon_state import HostBalloon, SnapLink
from host.memory.base import GuestRam, MemoryBackend
from host.memory.hostmem import Kill
from pagehint.config import HostConfig
from pagehint.ratelog import RateLimitedLog
from virtqueue import features as F
from virtqueue.codec import Fence, Negotiation
from virtqueue.contract import PAGE_SIZE, guest_id_problem, ram_size_problem

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from host.device_metrics import DeviceMetrics

T = TypeVar("T")
SUPPORTED = F.mask(F.REPORTING, F.PAGE_POISON)
# With the rest of the balloon (a guest that offered it): the stats queue, and
# deflate-on-oom where the host allows it (--deflate-on-oom). Never MUST_TELL_HOST:
# a deflate undoes nothing on the host (host/balloon.py).
BALLOON_FEATURES = F.mask(F.STATS_VQ)
# Ended sessions whose chain outcomes and totals are kept for a late fence:
# bounded, oldest dropped.
ENDED_SESSIONS_KEPT = 1024


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
    queue_size: int = HostConfig.queue_size
    last_seen: float = field(default_factory=time.monotonic)
    peak_resident_pages: int = 0
    streams: int = 0
    ended: bool = False
    # Reporting handlers of this session: ending the session cancels them, so an
    # expired or fenced session's idle stream does not linger.
    stream_tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def stream_opened(self, task: asyncio.Task[Any] | None) -> None:
        """A Reporting stream of this session began (any transport's)."""
        self.streams += 1
        if task is not None:
            self.stream_tasks.add(task)

    def stream_closed(self, task: asyncio.Task[Any] | None) -> None:
        self.streams -= 1
        if task is not None:
            self.stream_tasks.discard(task)

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
    # Offered touches in its chains (Chain.touched), and was told yes (never with
    # host_memory).
    touches_in_chain: bool = False
    # Why the OOM killer ended it (its stream ends ABORTED with this); "" otherwise.
    killed: str = ""
    # Its Reporting streams' wake-ups: set when the host has something to tell it
    # that answers no message of its own (evictions caused by other guests).
    wakes: set[asyncio.Event] = field(default_factory=set)
    # The rest of the balloon (host/balloon.py), when the guest offered it.
    balloon: HostBalloon | None = None

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


def of_guest(t: SessionTable, guest_id: str) -> Session | None:
    """The guest's live session, if it has one."""
    return t.sessions.get(t.by_guest.get(guest_id, ""))


def remember(table: OrderedDict[str, T], key: str, value: T) -> None:
    """Add to a record of ended sessions, bounded like ``ended`` (oldest dropped)."""
    table[key] = value
    table.move_to_end(key)
    while len(table) > ENDED_SESSIONS_KEPT:
        table.popitem(last=False)


def _check_offer(offer: Negotiation) -> None:
    """What a guest offers at negotiation, checked against the contract."""
    if guest_id_problem(offer.guest_id) is not None:
        raise NegotiationError("guest_id must be 1..128 printable characters")
    if offer.page_size != PAGE_SIZE:
        raise NegotiationError(f"page size {offer.page_size} unsupported (only {PAGE_SIZE})")
    problem = ram_size_problem(offer.ram_bytes)  # the guest's own rule (virtqueue/contract.py)
    if problem is not None:
        raise NegotiationError(problem)
    if not F.has(offer.features, F.REPORTING):
        raise NegotiationError("the guest did not offer VIRTIO_BALLOON_F_REPORTING")
    if offer.poison_val > 0xFF:
        raise NegotiationError(f"poison value {offer.poison_val} is not a byte")


class SessionTable:
    """Every session of the host, by token and by guest id (see the module's doc)."""

    def __init__(
        self,
        backend: MemoryBackend,
        metrics: DeviceMetrics,
        queue_size: int = HostConfig.queue_size,
        max_chain_ranges: int = HostConfig.max_chain_ranges,
        session_timeout: float = HostConfig.session_timeout,
        max_sessions: int = HostConfig.max_sessions,
        max_sessions_per_peer: int | None = None,
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.queue_size = queue_size
        self.max_chain_ranges = max_chain_ranges
        self.session_timeout = session_timeout
        self.max_sessions = max_sessions
        # Most sessions one client address may hold (None: only max_sessions).
        self.max_sessions_per_peer = max_sessions_per_peer
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
        # Balloon targets by guest id, kept across its sessions (pages; host/balloon.py).
        self.targets: OrderedDict[str, int] = OrderedDict()
        # --deflate-on-oom: offered to guests with the balloon.
        self.deflate_on_oom = False
        self.free_page_hint = False
        # One line per reason per interval, however many negotiations are refused.
        self.problems = RateLimitedLog(log)
        if backend.model is not None:
            backend.model.on_kill = self._oom_killed

    def negotiate(
        self, offer: Negotiation, identity: str | None = None, peer: str = ""
    ) -> tuple[Session, Fence | None]:
        """Open a session for ``offer``; with its ``previous_session``, fence that one first.

        ``identity`` is who the caller proved to be (its certificate's name, or the
        guest id its token belongs to); None when the host checks no identity.
        A guest id with a live session is taken over only by the holder of that
        session (naming it as previous) or by the same proven identity.
        ``peer`` is the client's address, for the per-peer quota ("": none).
        ``offer.host_memory``: the guest offered to follow the host's memory model
        (it does only if the host has one). The chain capacity is the host's own
        (--max-chain-ranges), told in the answer.
        """
        guest_id, previous_session = offer.guest_id, offer.previous_session
        _check_offer(offer)
        if previous_session in self.killed:
            # Its guest was the OOM killer's victim and did not hear of it (the kill
            # came as its stream broke): it is told now, and does not come back.
            raise SessionKilled(self.killed[previous_session])
        if identity is not None and identity != guest_id:
            raise NotPermitted(f"this client may act only as guest {identity!r}, not {guest_id!r}")
        follows = offer.host_memory and self.backend.model is not None
        ram = self._admit(offer, identity, peer, follows)
        fence, totals = None, GuestTotals()
        if previous_session:
            try:
                fence = self.fence(guest_id, previous_session)
            except NegotiationError:
                ram.release()
                raise
            if fence.known:
                totals = self.ended[previous_session][2]
        end_replaced(self, guest_id, previous_session, identity)
        supported = SUPPORTED
        if offer.balloon:
            supported |= BALLOON_FEATURES
            if self.deflate_on_oom:
                supported |= F.mask(F.DEFLATE_ON_OOM)
            if self.free_page_hint:
                supported |= F.mask(F.FREE_PAGE_HINT)
        accepted = offer.features & supported
        totals.sessions += 1
        s = Session(
            token=secrets.token_hex(16),
            guest_id=guest_id,
            ram_bytes=offer.ram_bytes,
            features=accepted,
            poison_val=offer.poison_val if F.has(accepted, F.PAGE_POISON) else 0,
            capacity=self.max_chain_ranges,
            ram=ram,
            totals=totals,
            queue_size=self.queue_size,
            peer=peer,
            host_memory=follows,
            touches_in_chain=offer.touches_in_chain and not follows,  # no Notice in a chain
            balloon=self._balloon(offer) if offer.balloon else None,
        )
        self._open(s, previous_session)
        return s, fence

    def _balloon(self, offer: Negotiation) -> HostBalloon:
        """A new session's balloon: its target kept from an earlier session, and
        snapshots (issue 25) where the guest offered them and its RAM is a file."""
        snap = SnapLink() if offer.migration and self.backend.name == "shm" else None
        return HostBalloon(self.targets.get(offer.guest_id, 0), snap=snap)

    def _open(self, s: Session, previous_session: str) -> None:
        """Book a new session (its negotiation passed) and say so."""
        self.sessions[s.token] = s
        self.by_guest[s.guest_id] = s.token
        if s.peer:
            self.per_peer[s.peer] += 1
        if previous_session:
            remember(self.resumed_by, previous_session, s)
        model = ", host memory model" if s.host_memory else ""
        features = F.describe(s.features)
        log.info(
            f"guest {s.guest_id} negotiated: {s.ram_bytes >> 20} MiB, features {features}{model}"
        )
        self.wake_evicted()  # its VMM's overhead may have pushed others' frames out

    def _admit(
        self, offer: Negotiation, identity: str | None, peer: str, host_memory: bool
    ) -> GuestRam:
        """May this caller have a session now, and is there room: its RAM, or raise."""
        guest_id, ram_bytes, page_size = offer.guest_id, offer.ram_bytes, offer.page_size
        previous_session = offer.previous_session
        try:
            check_takeover(self, guest_id, previous_session, identity)
            check_limits(self, guest_id, peer)
            check_fits(self, ram_bytes)
        except NegotiationError as e:
            turn_away(self, e, guest_id, peer)
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
            self.metrics.turned_away["no_room"] += 1
            raise LimitReached("the host cannot hold another guest's RAM now") from None
        if ram.killed:  # its own VMM's overhead made it the OOM killer's victim
            self.metrics.turned_away["no_room"] += 1
            raise LimitReached("the host's OOM killer took this guest as it started")
        return ram

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
        if s.host_memory:
            # Its streams' writers wait on a wake-up (host/queue.py with_notices):
            # woken, they see the session ended and finish, with the reason. A
            # cancel could land inside gRPC's own send and be lost there (the
            # stream then never ended: an OOM victim killed by its own touch).
            s.wake()
        else:
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
        log.info(f"session of guest {s.guest_id} ended ({why})")

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
        log.info(f"guest {kill.guest.guest_id} starting: {reason}")


def check_fits(t: SessionTable, ram_bytes: int) -> None:
    """A guest bigger than the host's memory and swap together could never be held:
    refused (RESOURCE_EXHAUSTED) rather than started and killed."""
    model = t.backend.model
    if model is None or model.fits(ram_bytes // PAGE_SIZE):
        return
    raise TooBig(
        f"guest RAM {ram_bytes >> 20} MiB + VMM overhead "
        f"{model.overhead_pages * PAGE_SIZE >> 20} MiB exceeds the host's memory "
        f"{model.memory_pages * PAGE_SIZE >> 20} MiB + swap "
        f"{model.swap_pages * PAGE_SIZE >> 20} MiB"
    )


def check_takeover(
    t: SessionTable, guest_id: str, previous_session: str, identity: str | None
) -> None:
    """May this caller open a session for ``guest_id`` now? Raise if not.

    Every refusal that means "another process has this guest's id now; stop"
    ends in GIVES_WAY (ALREADY_EXISTS, as a live session's refusal, which is
    retried: a crashed predecessor's session goes stale within seconds)."""
    old = t.by_guest.get(guest_id)
    if old is not None and previous_session in t.taken_over:
        raise SessionInUse(
            f"guest id {guest_id!r} was taken over by another client "
            f"{t.taken_over[previous_session]}{GIVES_WAY}"
        )
    nxt = t.resumed_by.get(previous_session) if previous_session else None
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
        live = t.sessions[old]
        if live.streams or time.monotonic() - live.last_seen < STALE_AFTER:
            raise SessionInUse(
                f"guest id {guest_id!r} has a live session; resume it (previous_session) "
                "or use another id"
            )


def check_limits(t: SessionTable, guest_id: str, peer: str) -> None:
    """Room for one more session (all clients, then this client's address)?"""
    old = t.by_guest.get(guest_id)
    if old is None and len(t.sessions) >= t.max_sessions:
        raise LimitReached(f"the host is at its limit of {t.max_sessions} sessions")
    quota = t.max_sessions_per_peer
    if not peer or quota is None:
        return
    held = t.per_peer[peer]
    if old is not None and t.sessions[old].peer == peer:
        held -= 1  # the session this one replaces
    if held >= quota:
        raise PeerLimitReached(
            f"this client's address is at its limit of {quota} sessions "
            f"(of the host's {t.max_sessions})"
        )


def turn_away(t: SessionTable, e: NegotiationError, guest_id: str, peer: str) -> None:
    """Count a refused negotiation; log the limits (rate-limited) but not the
    take-over refusals, which a reconnecting guest meets in passing."""
    reason = _TURN_AWAY_REASONS.get(type(e), "refused")
    t.metrics.turned_away[reason] += 1
    if isinstance(e, LimitReached):
        t.problems.note(
            f"turned_away:{reason}",
            f"{peer or 'a client'}: negotiation as {guest_id!r} refused: {e}",
        )


def end_replaced(
    t: SessionTable, guest_id: str, previous_session: str, identity: str | None
) -> None:
    """End the guest id's current session, remembering a take-over."""
    old = t.by_guest.get(guest_id)
    if old is None:
        return
    log.info(f"guest {guest_id} negotiated again: ending its previous session")
    t.end(old, "replaced")
    if old == previous_session:
        return
    nxt = t.resumed_by.get(previous_session) if previous_session else None
    if nxt is not None and nxt.token == old:  # a lost answer's retry (_check_takeover)
        how = "that resumed the same session before this one used its own"
    elif identity is not None:
        how = "with the same identity"
    else:
        how = f"after this one was silent for {STALE_AFTER:g} s (the host checks no identity)"
    remember(t.taken_over, old, how)
