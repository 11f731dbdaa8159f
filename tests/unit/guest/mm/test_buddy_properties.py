"""Property tests: random alloc/free/isolate/putback sequences keep every invariant."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guest.mm import MAX_ORDER, AllocatorError, BuddyAllocator
from guest.mm.check import check_invariants
from guest.mm.procfs import buddyinfo
from pagehint.config import BARE_MEMORY

OPS = st.lists(
    st.tuples(
        st.sampled_from(["alloc", "free", "isolate", "putback", "bad_free"]),
        st.integers(0, MAX_ORDER),
        st.integers(0, 10**6),
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_random_sequences_keep_invariants(ops: list[tuple[str, int, int]]) -> None:
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    allocated: dict[int, int] = {}
    isolated: dict[int, int] = {}
    for op, order, pick in ops:
        if op == "alloc":
            pfn = mm.alloc(order)
            if pfn >= 0:
                # never hands out an isolated page, nor an allocated one
                for ipfn, iorder in isolated.items():
                    assert not (
                        ipfn <= pfn < ipfn + (1 << iorder) or pfn <= ipfn < pfn + (1 << order)
                    )
                for apfn, aorder in allocated.items():
                    assert pfn + (1 << order) <= apfn or apfn + (1 << aorder) <= pfn
                allocated[pfn] = order
        elif op == "free" and allocated:
            pfn = sorted(allocated)[pick % len(allocated)]
            mm.free(pfn, allocated.pop(pfn))
        elif op == "isolate":
            candidates = [
                (pfn, o)
                for z in mm.zones
                for o in range(order, MAX_ORDER + 1)
                for pfn in z.free_area[o]
            ]
            if candidates:
                pfn, o = candidates[pick % len(candidates)]
                mm.isolate(pfn, o)
                isolated[pfn] = o
        elif op == "putback" and isolated:
            pfn = sorted(isolated)[pick % len(isolated)]
            mm.putback(pfn, isolated.pop(pfn), to_tail=bool(pick & 1))
        elif op == "bad_free":
            snapshot = bytes(mm.pg)
            target = pick % mm.nr_pages
            if allocated.get(target) != order:
                try:
                    mm.free(target, order)
                except AllocatorError:
                    pass
                else:
                    raise AssertionError("a bad free was accepted")
                assert bytes(mm.pg) == snapshot
        check_invariants(mm)
        assert mm.nr_isolated_pages == sum(1 << o for o in isolated.values())
        assert mm.allocated_pages == sum(1 << o for o in allocated.values())
    for pfn, o in isolated.items():
        mm.putback(pfn, o)
    for pfn, o in allocated.items():
        mm.free(pfn, o)
    check_invariants(mm)
    assert mm.nr_free_pages == mm.nr_pages
    assert all(counts[:MAX_ORDER] == [0] * MAX_ORDER for counts in buddyinfo(mm).values())
