"""Property test: the host never discards anything a bad chain names."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from host.device import BalloonDevice
from host.memory.sim import SimBackend
from virtqueue import codec
from virtqueue import features as F

PAGES = 16384  # 64 MiB


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1)), max_size=40)
    | st.lists(st.tuples(st.integers(0, PAGES + 2048), st.integers(0, 12)), max_size=40)
)
def test_any_chain_is_either_refused_untouched_or_valid(ranges: list[tuple[int, int]]) -> None:
    d = BalloonDevice(SimBackend())
    s, _ = d.table.negotiate(codec.Negotiation("g", PAGES * 4096, 4096, F.mask(F.REPORTING), 0))
    s.ram.touched([(0, PAGES)])
    pfns = [p for p, _ in ranges]
    orders = [o for _, o in ranges]
    used = d.handle_report(s, 1, pfns, orders)
    assert used is not None and used.id == 1
    if used.status == codec.REFUSED:
        assert used.reason and used.detail
        assert s.ram.resident_pages() == PAGES  # nothing discarded
        assert used.resident_bytes == PAGES * 4096
        return
    assert used.status == codec.DONE
    discarded = used.discarded_pages
    # accepted: every range lies inside RAM, aligned, disjoint, and exactly those went
    spans = sorted((p, 1 << o) for p, o in ranges)
    assert 1 <= len(spans) <= 32
    for (a, n), (b, _) in itertools.pairwise(spans):
        assert a + n <= b
    for p, n in spans:
        assert p % n == 0 and p + n <= PAGES
    assert discarded == sum(n for _, n in spans)
    assert s.ram.resident_pages() == PAGES - discarded


@st.composite
def valid_chains(draw: st.DrawFn) -> list[tuple[int, int]]:
    """Disjoint, aligned blocks (one per 1024-page cell), in any order."""
    cells = draw(st.lists(st.integers(0, PAGES // 1024 - 1), min_size=1, max_size=16, unique=True))
    chain = []
    for c in cells:
        order = draw(st.integers(0, 10))
        slot = draw(st.integers(0, (1024 >> order) - 1))
        chain.append((c * 1024 + (slot << order), order))
    return draw(st.permutations(chain))


@settings(max_examples=200, deadline=None)
@given(valid_chains(), st.sampled_from(["dontneed", "free"]))
def test_valid_chains_in_any_order_are_done_and_discarded(
    chain: list[tuple[int, int]], mode: str
) -> None:
    # A memory limit: only a limited host keeps the lazily freed ranges it reclaims.
    d = BalloonDevice(SimBackend(discard_mode=mode, capacity_pages=2 * PAGES))
    s, _ = d.table.negotiate(codec.Negotiation("g", PAGES * 4096, 4096, F.mask(F.REPORTING), 0))
    s.ram.touched([(0, PAGES)])
    used = d.handle_report(s, 7, [p for p, _ in chain], [o for _, o in chain])
    assert used is not None and used.status == codec.DONE
    pages = sum(1 << o for _, o in chain)
    assert used.discarded_pages == pages
    if mode == "dontneed":
        assert s.ram.resident_pages() == PAGES - pages
    else:  # MADV_FREE: still resident, now lazily free
        assert s.ram.resident_pages() == PAGES
        assert s.ram.lazily_free_pages() == pages
        # Reclaim under pressure takes exactly those frames, each once.
        assert d.backend.reclaim(pages) == pages
        assert s.ram.resident_pages() == PAGES - pages


@settings(max_examples=100, deadline=None)
@given(valid_chains(), st.data())
def test_a_repeated_range_is_refused_by_name(
    chain: list[tuple[int, int]], data: st.DataObject
) -> None:
    d = BalloonDevice(SimBackend())
    s, _ = d.table.negotiate(codec.Negotiation("g", PAGES * 4096, 4096, F.mask(F.REPORTING), 0))
    s.ram.touched([(0, PAGES)])
    bad = [*chain, data.draw(st.sampled_from(chain))]
    bad = data.draw(st.permutations(bad))
    used = d.handle_report(s, 1, [p for p, _ in bad], [o for _, o in bad])
    assert used is not None and used.status == codec.REFUSED
    assert used.reason == "duplicate"
    assert s.ram.resident_pages() == PAGES
