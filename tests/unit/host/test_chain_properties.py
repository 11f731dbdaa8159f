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
    s, _ = d.negotiate("g", PAGES * 4096, 4096, F.mask(F.REPORTING), 0, 32)
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
