"""The blocks a workload holds: list-like where workloads need it, and nothing for
the cyclic collector to walk however many there are."""

from __future__ import annotations

import asyncio
import gc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guest.memory import GuestMemory
from guest.mm import BuddyAllocator
from guest.workloads.base import WorkloadContext
from guest.workloads.builtin import WorkloadParams, memhog
from guest.workloads.held import HeldBlocks
from pagehint.config import BARE_MEMORY
from tests.waiting import wait_for

MIB = 1 << 20

blocks = st.lists(st.tuples(st.integers(0, 1 << 40), st.integers(0, 10)), max_size=50)


@given(blocks, st.lists(st.integers(0, 1 << 16), max_size=60))
def test_take_is_the_lists_swap_with_last_and_pop(
    start: list[tuple[int, int]], picks: list[int]
) -> None:
    # churn's old list code: held[i], held[-1] = held[-1], held[i]; held.pop()
    model = list(start)
    held = HeldBlocks(start)
    for pick in picks:
        if not model:
            break
        i = pick % len(model)
        model[i], model[-1] = model[-1], model[i]
        assert held.take(i) == model.pop()
        assert list(held) == model
    assert len(held) == len(model)
    assert held.pages() == sum(1 << o for _, o in model)


def test_take_out_of_range_and_bad_blocks_are_refused() -> None:
    held = HeldBlocks([(5, 1)])
    assert held.take(-1) == (5, 1)
    assert not held
    with pytest.raises(IndexError):
        held.take(0)
    with pytest.raises(ValueError):
        held.append(-1, 0)
    with pytest.raises(ValueError):
        held.append(1, 64)
    with pytest.raises(ValueError):
        held.append(1 << 58, 0)
    held.append((1 << 58) - 1, 10)
    assert list(held) == [((1 << 58) - 1, 10)]


async def test_a_hog_of_32768_blocks_gives_the_collector_nothing_to_walk() -> None:
    # What a full collection visits from an object is what gc.get_referents
    # returns (its tp_traverse): with a list of tuples that was every block.
    mm = BuddyAllocator(256 * MIB, model=BARE_MEMORY)
    ctx = WorkloadContext(GuestMemory(mm))
    task = asyncio.create_task(memhog(ctx, WorkloadParams(hold_seconds=60)))
    await wait_for(lambda: ctx.stats.alloc_ops >= 32768, 20.0, "the hog allocated")
    ctx.stop.set()
    await asyncio.wait_for(task, 10)
    assert len(ctx.groups["hog"]) == 32768
    # A HeldBlocks refers to its type and its array, the array to its type alone:
    # a collection's walk from the groups is a few objects, not 32,768.
    refs = gc.get_referents(*ctx.groups.values())
    assert len(refs) == 2
    (codes,) = [r for r in refs if not isinstance(r, type)]
    assert all(isinstance(r, type) for r in gc.get_referents(codes))
