"""Exact-block operations for trace replay: alloc_at and reshape_allocated."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guest.mm import MAX_ORDER, BuddyAllocator
from guest.mm.check import check_invariants
from guest.mm.exact import alloc_at, reshape_allocated
from pagehint.config import BARE_MEMORY

RAM = 64 << 20  # 16384 pages
PAGES = RAM >> 12

OPS = st.lists(
    st.tuples(
        st.sampled_from(["alloc_at", "free", "reshape_free", "isolate", "putback", "alloc"]),
        st.integers(0, 4),
        st.integers(0, PAGES - 1),
    ),
    min_size=1,
    max_size=150,
)


def _overlaps(a: int, ao: int, b: int, bo: int) -> bool:
    return not (a + (1 << ao) <= b or b + (1 << bo) <= a)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_any_exact_sequence_keeps_the_invariants(ops: list[tuple[str, int, int]]) -> None:
    mm = BuddyAllocator(RAM, model=BARE_MEMORY)
    allocated: dict[int, int] = {}  # head -> order, as the model holds them
    isolated: dict[int, int] = {}
    for op, order, pick in ops:
        pfn = pick & ~((1 << order) - 1)
        if op == "alloc_at":
            why = alloc_at(mm, pfn, order)
            clash_alloc = any(_overlaps(pfn, order, a, o) for a, o in allocated.items())
            clash_iso = any(_overlaps(pfn, order, a, o) for a, o in isolated.items())
            if why is None:
                assert not clash_alloc and not clash_iso
                allocated[pfn] = order
            elif why == "isolated":
                assert clash_iso
            else:
                assert why == "not_free" and clash_alloc
        elif op == "alloc":
            got = mm.alloc(order)
            if got >= 0:
                allocated[got] = order
        elif op == "free" and allocated:
            head = sorted(allocated)[pick % len(allocated)]
            mm.free(head, allocated.pop(head))
        elif op == "reshape_free" and allocated:
            # free a sub-block of an allocated block, or a block made of several
            head = sorted(allocated)[pick % len(allocated)]
            horder = allocated[head]
            sub_order = min(order, MAX_ORDER)
            target = (head + (pick % (1 << horder))) & ~((1 << sub_order) - 1)
            covered = all(
                any(a <= p < a + (1 << o) for a, o in allocated.items())
                for p in range(target, target + (1 << sub_order))
            )
            why = reshape_allocated(mm, target, sub_order)
            assert (why is None) == covered
            if why is None:
                # the model: split every block touching the range into pages,
                # then the range becomes one block
                for a, o in list(allocated.items()):
                    if _overlaps(a, o, target, sub_order):
                        del allocated[a]
                        for p in range(a, a + (1 << o)):
                            if not target <= p < target + (1 << sub_order):
                                allocated[p] = 0
                mm.free(target, sub_order)
        elif op == "isolate":
            free_blocks = [(p, o) for z in mm.zones for o in range(11) for p in z.free_area[o]]
            if free_blocks:
                p, o = free_blocks[pick % len(free_blocks)]
                mm.isolate(p, o)
                isolated[p] = o
        elif op == "putback" and isolated:
            head = sorted(isolated)[pick % len(isolated)]
            mm.putback(head, isolated.pop(head))
        check_invariants(mm)
    # Everything the model holds is allocated in the allocator, in that shape.
    for head, order in allocated.items():
        info = mm.block_at(head)
        assert (info.state, info.order) == ("allocated", order)
    assert mm.allocated_pages == sum(1 << o for o in allocated.values())


def test_alloc_at_splits_around_the_block() -> None:
    mm = BuddyAllocator(RAM, model=BARE_MEMORY)
    before = mm.nr_free_pages
    assert alloc_at(mm, 5, 0) is None
    assert mm.block_at(5).state == "allocated"
    assert mm.nr_free_pages == before - 1
    # the pages around it are free in blocks of falling order: 4 (o0), 6 (o1), 0 (o2), 8 (o3)...
    assert mm.is_free(4, 0) and mm.is_free(6, 1) and mm.is_free(0, 2) and mm.is_free(8, 3)
    assert alloc_at(mm, 5, 0) == "not_free"
    assert alloc_at(mm, 4, 1) == "not_free"  # covers the allocated page 5
    assert alloc_at(mm, PAGES, 0) == "outside"
    mm.free(5, 0)
    check_invariants(mm)
    assert mm.nr_free_pages == before and mm.is_free(0, MAX_ORDER)


def test_alloc_at_an_isolated_block_says_so() -> None:
    mm = BuddyAllocator(RAM, model=BARE_MEMORY)
    mm.isolate(1024, MAX_ORDER)
    assert alloc_at(mm, 1024 + 8, 2) == "isolated"
    mm.putback(1024, MAX_ORDER)
    assert alloc_at(mm, 1024 + 8, 2) is None
    check_invariants(mm)


def test_reshape_splits_a_high_order_allocation_like_split_page() -> None:
    mm = BuddyAllocator(RAM, model=BARE_MEMORY)
    assert alloc_at(mm, 64, 3) is None
    # the kernel frees a split high-order block page by page
    assert reshape_allocated(mm, 66, 0) is None
    assert [mm.block_at(p).order for p in range(64, 72)] == [0] * 8
    for p in range(64, 72):
        assert reshape_allocated(mm, p, 0) is None  # already that shape: nothing to do
        mm.free(p, 0)
    check_invariants(mm)
    assert mm.allocated_pages == 0
    assert reshape_allocated(mm, 64, 0) == "not_allocated"
