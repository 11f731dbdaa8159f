from __future__ import annotations

import pytest

from host.device import BalloonDevice, ChainRefused, NegotiationError, SessionError
from host.memory.sim import SimBackend
from virtqueue import features as F

RAM = 64 << 20


def device(**kw: object) -> BalloonDevice:
    return BalloonDevice(SimBackend(), **kw)  # type: ignore[arg-type]


def test_negotiate_accepts_reporting_and_poison_only() -> None:
    d = device()
    s = d.negotiate("g", RAM, 4096, F.mask(F.REPORTING, F.PAGE_POISON, F.STATS_VQ), 0xAA, 32)
    assert s.features == F.mask(F.REPORTING, F.PAGE_POISON)
    assert s.poisoned
    assert len(s.token) == 32
    with pytest.raises(NegotiationError, match="REPORTING"):
        d.negotiate("h", RAM, 4096, 0, 0, 32)
    with pytest.raises(NegotiationError, match="page size"):
        d.negotiate("h", RAM, 8192, F.mask(F.REPORTING), 0, 32)
    with pytest.raises(NegotiationError, match="RAM"):
        d.negotiate("h", RAM + 4096, 4096, F.mask(F.REPORTING), 0, 32)


def test_renegotiation_replaces_session() -> None:
    d = device()
    a = d.negotiate("g", RAM, 4096, F.mask(F.REPORTING), 0, 32)
    b = d.negotiate("g", RAM, 4096, F.mask(F.REPORTING), 0, 32)
    with pytest.raises(SessionError):
        d.session(a.token)
    assert d.session(b.token) is b


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
        (list(range(33)), [0] * 33, "too_many_ranges"),
    ],
)
def test_bad_chains_refused_and_counted(pfns: list[int], orders: list[int], reason: str) -> None:
    d = device()
    s = d.negotiate("g", RAM, 4096, F.mask(F.REPORTING), 0, 32)
    s.ram.touched([(0, 16384)])
    with pytest.raises(ChainRefused) as e:
        d.handle_report(s, pfns, orders)
    assert e.value.reason == reason
    assert d.refusals[reason] == 1
    assert s.ram.resident_pages() == 16384  # nothing discarded
    assert s.reported_pages == 0


def test_good_chain_discards_and_poison_skips() -> None:
    d = device()
    s = d.negotiate("g", RAM, 4096, F.mask(F.REPORTING), 0, 32)
    s.ram.touched([(0, 16384)])
    assert d.handle_report(s, [1024, 512], [10, 9]) == 1536
    assert s.ram.resident_pages() == 16384 - 1536
    p = d.negotiate("p", RAM, 4096, F.mask(F.REPORTING, F.PAGE_POISON), 0x5A, 32)
    p.ram.touched([(0, 16384)])
    assert d.handle_report(p, [0], [10]) == 0
    assert p.ram.resident_pages() == 16384
    assert p.poison_skipped == 1


def test_idle_sessions_expire() -> None:
    d = device(session_timeout=5.0)
    s = d.negotiate("g", RAM, 4096, F.mask(F.REPORTING), 0, 32)
    assert d.expire(now=s.last_seen + 1) == []
    assert d.expire(now=s.last_seen + 6) == [s.token]
    assert not d.sessions
