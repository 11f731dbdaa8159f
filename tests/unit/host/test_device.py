from __future__ import annotations

import errno

import pytest

from host.device import BalloonDevice, Faults
from host.figures import guest_figures
from host.memory.base import GuestRam
from host.memory.sim import SimBackend
from host.sessions import (
    LimitReached,
    NegotiationError,
    NotPermitted,
    Session,
    SessionError,
    SessionInUse,
)
from tests.logs import log_lines
from virtqueue import codec
from virtqueue import features as F

RAM = 64 << 20
PAGES = RAM // 4096
REPORTING = F.mask(F.REPORTING)


def device(**kw: object) -> BalloonDevice:
    return BalloonDevice(SimBackend(), **kw)  # type: ignore[arg-type]


def session(d: BalloonDevice, guest: str = "g", previous: str = "") -> Session:
    s, _ = d.table.negotiate(codec.Negotiation(guest, RAM, 4096, REPORTING, 0, previous))
    return s


def test_negotiate_accepts_reporting_and_poison_only() -> None:
    d = device()
    s, fence = d.table.negotiate(
        codec.Negotiation("g", RAM, 4096, F.mask(F.REPORTING, F.PAGE_POISON, F.STATS_VQ), 0xAA)
    )
    assert fence is None
    assert s.features == F.mask(F.REPORTING, F.PAGE_POISON)
    assert s.poisoned
    assert len(s.token) == 32
    with pytest.raises(NegotiationError, match="REPORTING"):
        d.table.negotiate(codec.Negotiation("h", RAM, 4096, 0, 0))
    with pytest.raises(NegotiationError, match="page size"):
        d.table.negotiate(codec.Negotiation("h", RAM, 8192, REPORTING, 0))
    with pytest.raises(NegotiationError, match="RAM"):
        d.table.negotiate(codec.Negotiation("h", RAM + 4096, 4096, REPORTING, 0))
    # The contract's bounds, the same the guest is held to: 64 MiB at least.
    with pytest.raises(NegotiationError, match="out of range: must be between 64 MiB"):
        d.table.negotiate(codec.Negotiation("h", 4 << 20, 4096, REPORTING, 0))


def test_a_live_guest_id_is_taken_over_only_by_its_holder() -> None:
    d = device()
    a = session(d)
    with pytest.raises(SessionInUse):
        session(d)  # someone else, same id, no proof: refused
    b = session(d, previous=a.token)  # the holder resumes: replaces (and fences) it
    with pytest.raises(SessionError):
        d.table.session(a.token)
    assert d.table.session(b.token) is b and a.ended
    c, _ = d.table.negotiate(codec.Negotiation("g", RAM, 4096, REPORTING, 0, ""), identity="g")
    assert b.ended and d.table.session(c.token) is c  # the same proven identity may take over
    with pytest.raises(NotPermitted):
        d.table.negotiate(codec.Negotiation("g", RAM, 4096, REPORTING, 0, ""), identity="other")


def test_a_stale_session_of_a_crashed_guest_can_be_replaced() -> None:
    d = device()
    a = session(d)
    a.last_seen -= 10  # no stream, silent for longer than STALE_AFTER
    b = session(d)
    assert a.ended and d.table.session(b.token) is b


def test_session_limit_and_attach_failures_are_limits_without_details() -> None:
    d = device(max_sessions=2)
    session(d, "a")
    session(d, "b")
    with pytest.raises(LimitReached, match="limit of 2"):
        session(d, "c")

    class NoRoom(SimBackend):
        def attach(self, guest_id: str, nr_pages: int, page_size: int) -> GuestRam:
            raise OSError(errno.EMFILE, "Too many open files", "/dev/shm/secret/path.ram")

    d2 = BalloonDevice(NoRoom())
    with pytest.raises(LimitReached) as e:
        session(d2)
    assert "/dev/shm" not in str(e.value) and "Too many" not in str(e.value)


def test_an_idle_session_expires_even_with_a_stream_open() -> None:
    d = device(session_timeout=5.0)
    s = session(d)
    s.streams = 1
    assert d.table.expire(now=s.last_seen + 6) == [s.token]


@pytest.mark.parametrize(
    ("pfns", "orders", "reason"),
    [
        ([16384], [0], "out_of_range"),
        ([1], [1], "misaligned"),
        ([0], [11], "bad_order"),
        ([0, 0], [0, 0], "duplicate"),
        ([0, 1], [1, 0], "overlap"),
        ([0, 1], [0], "malformed"),
        ([], [], "empty"),
        (list(range(513)), [0] * 513, "too_many_ranges"),  # over --max-chain-ranges
    ],
)
def test_bad_chains_refused_and_counted(pfns: list[int], orders: list[int], reason: str) -> None:
    d = device()
    s = session(d)
    s.ram.touched([(0, PAGES)])
    used = d.handle_report(s, 5, pfns, orders)
    assert used is not None
    assert (used.id, used.status, used.reason) == (5, codec.REFUSED, reason)
    assert d.metrics.refusals[reason] == 1
    assert s.ram.resident_pages() == PAGES  # nothing discarded
    assert s.totals.reported_pages == 0 and s.totals.refused == 1
    # the session goes on: the next good chain is done
    ok = d.handle_report(s, 6, [0], [9])
    assert ok is not None and ok.status == codec.DONE


def test_good_chain_discards_and_poison_skips() -> None:
    d = device()
    s = session(d)
    s.ram.touched([(0, PAGES)])
    used = d.handle_report(s, 1, [1024, 512], [10, 9])
    assert used is not None and used.discarded_pages == 1536
    assert used.resident_bytes == (PAGES - 1536) * 4096
    assert s.ram.resident_pages() == PAGES - 1536
    p, _ = d.table.negotiate(
        codec.Negotiation("p", RAM, 4096, F.mask(F.REPORTING, F.PAGE_POISON), 0x5A)
    )
    p.ram.touched([(0, PAGES)])
    skipped = d.handle_report(p, 1, [0], [10])
    assert skipped is not None and skipped.status == codec.DONE and skipped.discarded_pages == 0
    assert p.ram.resident_pages() == PAGES
    assert p.totals.poison_skipped == 1


class FailingRam:
    """Wraps a session's RAM so that its discard fails with an errno."""

    def __init__(self, s: Session, code: int) -> None:
        self.inner = s.ram
        self.code = code

    def discard(self, ranges: object) -> int:
        raise OSError(self.code, "simulated")

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_a_failed_discard_is_answered_counted_and_not_booked() -> None:
    d = device()
    s = session(d)
    s.ram = FailingRam(s, errno.EIO)  # type: ignore[assignment]
    used = d.handle_report(s, 3, [0], [9])
    assert used is not None
    assert (used.status, used.errno, used.reason) == (
        codec.DISCARD_FAILED,
        errno.EIO,
        "discard_failed",
    )
    assert "EIO" in used.detail
    assert s.totals.failed == 1 and s.totals.chains == 0 and s.totals.reported_pages == 0
    assert d.metrics.discard_errors == {"EIO": 1}
    assert d.metrics.chains == 0


def test_injected_faults_are_seeded_and_decided_before_any_discard() -> None:
    d = device(faults=Faults(refuse=0.3, discard_error=0.3, seed=7))
    s = session(d)
    s.ram.touched([(0, PAGES)])
    statuses = [d.handle_report(s, i, [(i % 32) * 512], [9]) for i in range(200)]
    kinds = {u.status for u in statuses if u is not None}
    assert kinds == {codec.DONE, codec.REFUSED, codec.DISCARD_FAILED}
    assert s.totals.chains + s.totals.refused + s.totals.failed == 200
    assert d.metrics.refusals["injected"] == s.totals.refused


def test_min_order_is_enforced() -> None:
    d = device(min_order=9)
    s = session(d)
    used = d.handle_report(s, 1, [0], [8])
    assert used is not None and used.reason == "below_min_order"


def test_fence_ends_the_old_session_and_names_its_done_chains() -> None:
    d = device()
    old = session(d)
    assert d.handle_report(old, 1, [0], [9]) is not None  # done
    assert d.handle_report(old, 2, [1], [9]) is not None  # refused (misaligned)
    new = session(d, previous=old.token)
    assert old.ended and old.token not in d.table.sessions
    _, fence = d.table.negotiate(codec.Negotiation("g", RAM, 4096, REPORTING, 0, new.token))
    assert fence is not None and fence.known
    # a chain of a fenced session that was still waiting is cancelled, never discarded
    assert d.handle_report(old, 3, [512], [9]) is None


def test_fence_reports_done_ids_and_unknown_sessions() -> None:
    d = device()
    old = session(d)
    d.handle_report(old, 1, [0], [9])
    d.handle_report(old, 2, [1], [9])
    _, fence = d.table.negotiate(codec.Negotiation("g", RAM, 4096, REPORTING, 0, old.token))
    assert fence == codec.Fence(known=True, done_ids=frozenset({1}))
    _, unknown = d.table.negotiate(codec.Negotiation("h", RAM, 4096, REPORTING, 0, "f" * 32))
    assert unknown == codec.Fence(known=False)


def test_fence_of_another_guests_session_is_refused() -> None:
    d = device()
    a = session(d, "a")
    with pytest.raises(NegotiationError, match="another guest"):
        d.table.negotiate(codec.Negotiation("b", RAM, 4096, REPORTING, 0, a.token))
    assert not a.ended


def test_totals_follow_a_guests_line_of_sessions_not_its_id() -> None:
    d = device()
    first = session(d)
    d.handle_report(first, 1, [0], [9])
    second = session(d, previous=first.token)
    d.handle_report(second, 2, [512], [9])
    fig = guest_figures(second)
    assert fig.reported_bytes == 2 * 512 * 4096
    assert fig.chains == 2 and fig.sessions == 2
    # a new guest process with the same id (no previous session) starts from zero
    second.last_seen -= 10  # (its predecessor crashed: stale)
    fresh = session(d)
    assert guest_figures(fresh).chains == 0 and guest_figures(fresh).sessions == 1


def test_bad_touched_batches_are_counted_not_fatal() -> None:
    lines = log_lines()
    d = device()
    s = session(d)
    assert not d.handle_touched(s, [0], [0])
    d.problems.flush(force=True)
    assert any("touched run 0x0+0 is empty" in line for line in lines), lines
    assert not d.handle_touched(s, [0, 1], [1])
    assert not d.handle_touched(s, [PAGES], [1])
    assert d.metrics.refusals == {"touched_out_of_range": 2, "touched_malformed": 1}
    assert d.handle_touched(s, [0], [8]) and s.ram.resident_pages() == 8


def test_refusal_logs_are_rate_limited_counts_exact() -> None:
    lines = log_lines()
    d = device()
    s = session(d)
    lines.clear()
    for i in range(1000):
        d.handle_report(s, i, [PAGES], [0])
    assert d.metrics.refusals["out_of_range"] == 1000
    assert len(lines) == 1
    d.problems.flush(now=float("inf"))
    assert len(lines) == 2 and lines[1].startswith("999 more like this")


def test_idle_sessions_expire() -> None:
    d = device(session_timeout=5.0)
    s = session(d)
    assert d.table.expire(now=s.last_seen + 1) == []
    assert d.table.expire(now=s.last_seen + 6) == [s.token]
    assert not d.table.sessions


def test_a_session_taken_over_by_the_same_identity_is_not_taken_back() -> None:
    d = device()
    first, _ = d.table.negotiate(codec.Negotiation("g", RAM, 4096, REPORTING, 0, ""), identity="g")
    second, _ = d.table.negotiate(codec.Negotiation("g", RAM, 4096, REPORTING, 0, ""), identity="g")
    assert first.ended
    # the evicted process reconnects naming its old session: it gives way
    with pytest.raises(SessionInUse, match="taken over"):
        d.table.negotiate(
            codec.Negotiation("g", RAM, 4096, REPORTING, 0, first.token), identity="g"
        )
    assert not second.ended


def test_negative_pfns_from_in_process_callers_are_refused_by_name() -> None:
    d = device()
    s = session(d)
    used = d.handle_report(s, 1, [-1024], [10])
    assert used is not None and used.status == codec.REFUSED and used.reason == "out_of_range"


def test_a_released_ledger_discards_nothing() -> None:
    d = device()
    s = session(d)
    s.ram.touched([(0, 1024)])
    before = d.backend.resident_pages_total()
    s.ram.release()
    assert s.ram.discard([(0, 1024)]) == 0
    assert s.ram.resident_pages() == 0
    assert d.backend.resident_pages_total() == before - 1024
