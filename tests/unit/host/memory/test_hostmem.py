"""The host's memory model (host/memory/hostmem.py): LRU across guests, lazy before
swap, swap slots, costs, the OOM killer, and exact counters."""

from __future__ import annotations

import pytest

from host.memory.hostmem import (
    ABSENT,
    CHUNK_PAGES,
    LAZY,
    RESIDENT,
    SWAPPED,
    GuestMemory,
    HostMemory,
    Kill,
)

C = CHUNK_PAGES  # 512 frames: one 2 MiB chunk


def state(g: GuestMemory, pfn: int) -> int:
    ch = g.chunks.get(pfn // C)
    return ABSENT if ch is None else ch.states[pfn % C]


def check_books(m: HostMemory) -> None:
    """Every counter agrees with the states, frame by frame."""
    used = swapped = 0
    for g in m.guests:
        res = sum(ch.states.count(RESIDENT) + ch.states.count(LAZY) for ch in g.chunks.values())
        lz = sum(ch.states.count(LAZY) for ch in g.chunks.values())
        sw = sum(ch.states.count(SWAPPED) for ch in g.chunks.values())
        assert (g.resident, g.lazy, g.swapped) == (res, lz, sw), g.guest_id
        for ch in g.chunks.values():
            s = ch.states
            assert ch.resident == s.count(RESIDENT) + s.count(LAZY)
            assert (ch.lazy, ch.swapped) == (s.count(LAZY), s.count(SWAPPED))
        used += g.resident + g.overhead
        swapped += g.swapped
    assert m.used == used
    assert m.swap_used == swapped <= m.swap_pages
    assert m.used <= m.memory_pages


def test_the_least_recently_faulted_chunk_of_any_guest_goes_first() -> None:
    m = HostMemory(memory_pages=3 * C, swap_pages=10 * C)
    a = m.attach("a", 8 * C, evictable=True)
    b = m.attach("b", 8 * C, evictable=True)
    a.touched([(0, C)])  # oldest fault: a's chunk 0
    b.touched([(0, C)])
    a.touched([(C, C)])
    assert m.swap_outs == 0
    out = b.touched([(C, C)])  # one chunk too many: a's chunk 0 goes, not b's own
    assert out.swapped_out == C and m.swap_outs == C
    assert state(a, 0) == SWAPPED and state(a, C) == RESIDENT and state(b, 0) == RESIDENT
    assert a.swapped == C and b.swapped == 0
    # A major fault makes a chunk the newest: then b's chunk 0 is the coldest.
    a.touched([(0, 1)])
    assert state(b, 0) == SWAPPED and state(a, 0) == RESIDENT
    check_books(m)


def test_a_touch_of_resident_frames_is_no_fault_and_does_not_refresh_the_lru() -> None:
    m = HostMemory(memory_pages=2 * C, swap_pages=4 * C)
    a = m.attach("a", 4 * C, evictable=True)
    a.touched([(0, C)])
    a.touched([(C, C)])
    a.touched([(0, C)])  # resident already: the host sees nothing (no accessed-bit scan)
    a.touched([(2 * C, C)])
    assert state(a, 0) == SWAPPED and state(a, C) == RESIDENT
    check_books(m)


def test_lazily_freed_frames_are_reclaimed_before_anything_is_swapped() -> None:
    m = HostMemory(memory_pages=3 * C, swap_pages=4 * C)
    a = m.attach("a", 4 * C, evictable=True)
    b = m.attach("b", 4 * C, evictable=True)
    a.touched([(0, C)])  # the oldest chunk
    b.touched([(0, C)])
    b.discard([(0, C)], lazily=True)  # b's newest chunk, lazily freed
    assert b.resident == C and b.lazy == C and m.used == 2 * C
    a.touched([(C, C)])
    out = a.touched([(2 * C, C)])  # over by one chunk: b's lazy frames go, no I/O
    assert out.swapped_out == 0 and out.delay == 0
    assert m.swap_outs == 0 and m.lazy_reclaimed == C
    assert state(b, 0) == ABSENT and state(a, 0) == RESIDENT
    assert b.pending == [(0, C)]  # b is told: its next touch of them must be reported
    check_books(m)


def test_reusing_a_lazy_frame_is_no_fault_and_it_can_be_swapped_again() -> None:
    m = HostMemory(memory_pages=2 * C, swap_pages=4 * C)
    a = m.attach("a", 4 * C, evictable=True)
    a.touched([(0, C)])
    a.discard([(0, C)], lazily=True)
    out = a.touched([(0, 10)])
    assert (out.minor, out.major, out.brought) == (0, 0, 0)
    assert a.lazy == C - 10 and a.resident == C
    check_books(m)


def test_discarding_a_swapped_frame_frees_its_slot() -> None:
    m = HostMemory(memory_pages=C, swap_pages=2 * C)
    a = m.attach("a", 4 * C, evictable=True)
    a.touched([(0, C)])
    a.touched([(C, C)])
    assert m.swap_used == C and state(a, 0) == SWAPPED
    assert a.discard([(0, 256)]) == 0  # nothing resident released: slots freed
    assert m.swap_used == C - 256 and a.swapped == C - 256
    a.discard([(256, 256)], lazily=True)  # MADV_FREE frees swap slots too
    assert m.swap_used == 0 and state(a, 256) == ABSENT
    # ... so the next touch of them is a minor fault, not a major one
    out = a.touched([(0, 1)])
    assert (out.minor, out.major) == (1, 0)
    check_books(m)


def test_swap_in_costs_per_major_fault_frame_and_swap_out_is_charged_to_the_faulting_guest() -> (
    None
):
    m = HostMemory(memory_pages=2 * C, swap_pages=4 * C, swap_in_cost=1e-3, swap_out_cost=1e-4)
    a = m.attach("a", 4 * C, evictable=True)
    b = m.attach("b", 4 * C, evictable=True)
    a.touched([(0, C)])
    a.touched([(C, C)])
    out = b.touched([(0, C)])  # forces a's chunk 0 out: C frames written, charged to b
    assert (out.minor, out.major, out.swapped_out) == (C, 0, C)
    assert out.delay == pytest.approx(C * 1e-4)
    # a touches 10 frames of its swapped chunk: 10 major faults, and to make room the
    # coldest chunk (a's chunk 1) is written out: charged to a
    out = a.touched([(0, 10)])
    assert (out.minor, out.major, out.swapped_out) == (0, 10, C)
    assert out.delay == pytest.approx(10 * 1e-3 + C * 1e-4)
    assert state(a, C) == SWAPPED and state(b, 0) == RESIDENT
    assert a.major_faults == 10 and b.minor_faults == C and a.minor_faults == 2 * C
    assert m.swap_ins == 10 and m.swap_outs == 2 * C
    # the rest of the chunk is still swapped: a later touch pays for it then
    out = a.touched([(0, C)])
    assert out.major == C - 10
    check_books(m)


def test_an_absent_touch_is_a_minor_fault_with_no_delay() -> None:
    m = HostMemory(memory_pages=4 * C, swap_pages=0)
    a = m.attach("a", 4 * C, evictable=True)
    out = a.touched([(5, 3), (C - 1, 2)])  # the second run crosses a chunk
    assert out == (5, 5, 0, 0, 0.0, False)
    assert a.resident == 5 and m.used == 5
    check_books(m)


def test_oom_kills_the_largest_guest_and_frees_its_memory_and_swap() -> None:
    kills: list[Kill] = []
    m = HostMemory(memory_pages=4 * C, swap_pages=C, overhead_pages=10, on_kill=kills.append)
    small = m.attach("small", 8 * C, evictable=True)
    big = m.attach("big", 8 * C, evictable=True)
    big.touched([(0, 3 * C)])
    # 4 chunks + 20 overhead: small's first chunk swaps big's oldest chunk out, and
    # its second finds the swap full: OOM, and big (3 chunks + 10) goes, not small
    small.touched([(0, C)])
    assert m.swap_used == C and m.oom_kills == 0 and state(big, 0) == SWAPPED
    out = small.touched([(C, C)])
    assert m.oom_kills == 1 and len(kills) == 1
    k = kills[0]
    assert k.guest is big and big.killed is k and big.released
    assert (k.resident, k.swapped, k.badness) == (2 * C + 10, C, 3 * C + 10)
    assert k.reason() == (
        f"killed by the host's OOM killer (oom_badness {3 * C + 10} pages: "
        f"{2 * C + 10} resident, {C} swapped)"
    )
    assert not out.killed and not small.released
    assert m.swap_used == 0 and m.used == 2 * C + 10 == small.resident + small.overhead
    assert big not in m.guests and all(ch.owner is small for ch in m.lru)
    check_books(m)


def test_oom_counts_swapped_frames_a_mostly_swapped_guest_is_the_victim() -> None:
    m = HostMemory(memory_pages=3 * C, swap_pages=2 * C)
    cold = m.attach("cold", 8 * C, evictable=True)
    hot = m.attach("hot", 8 * C, evictable=True)
    cold.touched([(0, 2 * C)])
    hot.touched([(0, 3 * C)])  # cold's two chunks go to swap: cold holds 0 resident
    assert cold.resident == 0 and cold.swapped == 2 * C
    out = hot.touched([(3 * C, C)])  # swap full: cold (2 chunks swapped) vs hot (3 resident)
    assert out.killed and hot.killed is not None  # hot scores 4 chunks with its own fault
    assert not cold.released and m.oom_kills == 1
    check_books(m)


def test_the_faulting_guest_killed_by_its_own_batch_is_told() -> None:
    m = HostMemory(memory_pages=C, swap_pages=0)
    a = m.attach("a", 4 * C, evictable=True)
    out = a.touched([(0, 2 * C)])
    assert out.killed and a.released and m.used == 0 and m.oom_kills == 1
    assert a.touched([(0, 1)]).killed  # a later batch changes nothing
    check_books(m)


def test_older_guests_are_counted_but_never_swapped() -> None:
    m = HostMemory(memory_pages=3 * C, swap_pages=8 * C)
    old = m.attach("old", 8 * C, evictable=False)
    new = m.attach("new", 8 * C, evictable=True)
    old.touched([(0, 2 * C)])  # the oldest faults, yet never swapped
    new.touched([(0, C)])
    new.touched([(C, C)])  # over: only new's own chunks can go
    assert old.swapped == 0 and new.swapped == C and state(new, 0) == SWAPPED
    assert old.pending == [] and new.pending == [(0, C)]
    check_books(m)


def test_vmm_overhead_is_resident_from_attach_and_never_swapped() -> None:
    m = HostMemory(memory_pages=2 * C, swap_pages=4 * C, overhead_pages=C // 2)
    a = m.attach("a", 4 * C, evictable=True)
    assert m.used == C // 2 and a.badness() == C // 2
    a.touched([(0, C + C // 2)])
    b = m.attach("b", 4 * C, evictable=True)  # its overhead pushes a's oldest chunk out
    assert a.swapped == C and m.used == C + C // 2 and b.resident == 0
    b.release()
    a.release()
    assert m.used == 0 and m.swap_used == 0 and not m.lru
    assert m.fits(6 * C - C // 2) and not m.fits(6 * C - C // 2 + 1)


def test_evictions_are_told_once_in_whole_chunks() -> None:
    m = HostMemory(memory_pages=C, swap_pages=8 * C)
    a = m.attach("a", 8 * C, evictable=True)
    a.touched([(0, 3)])
    a.touched([(C, C)])
    assert m.dirty == {a: None}
    assert a.take_evicted() == [(0, C)]
    assert a.take_evicted() == [] and not m.dirty
    a.touched([(4 * C, C)])  # chunk 1 goes
    a.touched([(2 * C, C)])  # chunk 4 goes
    a.touched([(3 * C, C)])  # chunk 2 goes: next to chunk 1, one run
    assert a.take_evicted() == [(C, C), (4 * C, C), (2 * C, C)]
    b = m.attach("b", 8 * C, evictable=True)
    b.touched([(0, C)])  # a's chunk 3
    a.touched([(5 * C, C)])  # b's chunk 0
    b.touched([(C, C)])  # a's chunk 5
    a.touched([(6 * C, C)])  # b's chunk 1: adjacent to b's chunk 0, merged
    assert a.take_evicted() == [(3 * C, C), (5 * C, C)]
    assert b.take_evicted() == [(0, 2 * C)]


def test_a_batch_larger_than_the_host_evicts_its_own_oldest_chunks() -> None:
    m = HostMemory(memory_pages=2 * C, swap_pages=8 * C)
    a = m.attach("a", 8 * C, evictable=True)
    out = a.touched([(0, 4 * C)])
    assert out.swapped_out == 2 * C
    assert [state(a, i * C) for i in range(4)] == [SWAPPED, SWAPPED, RESIDENT, RESIDENT]
    check_books(m)


def test_random_operations_keep_the_books() -> None:
    import random

    rng = random.Random(7)
    m = HostMemory(memory_pages=6 * C, swap_pages=5 * C, overhead_pages=7)
    guests = [m.attach(f"g{i}", 8 * C, evictable=i != 0) for i in range(3)]
    for _ in range(400):
        i = rng.randrange(len(guests))
        g = guests[i]
        if g.released:  # killed: a new guest takes its place
            g = guests[i] = m.attach(g.guest_id, 8 * C, evictable=g.evictable)
        order = rng.choice((0, 3, 9))
        pfn = rng.randrange(0, 8 * C >> order) << order
        op = rng.random()
        if op < 0.5:
            g.touched([(pfn, 1 << order)])
        elif op < 0.75:
            g.discard([(pfn, 1 << order)])
        else:
            g.discard([(pfn, 1 << order)], lazily=True)
        check_books(m)
    assert m.swap_outs > 0 and m.swap_ins > 0 and m.lazy_reclaimed > 0


def test_on_a_tie_the_oom_killer_takes_the_newest_guest() -> None:
    # mm/oom_kill.c oom_evaluate_task: an equal score found later (creation order)
    # replaces the chosen one.
    kills: list[Kill] = []
    m = HostMemory(memory_pages=2 * C, swap_pages=0, on_kill=kills.append)
    old = m.attach("old", 4 * C, evictable=True)
    new = m.attach("new", 4 * C, evictable=True)
    old.touched([(0, C)])
    new.touched([(0, C)])
    third = m.attach("third", 4 * C, evictable=True)
    third.touched([(0, 8)])  # over, no swap: old and new tie at C, third has 8
    assert [k.guest for k in kills] == [new] and not old.released
    check_books(m)
