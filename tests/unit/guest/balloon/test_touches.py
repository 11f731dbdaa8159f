"""Frames touched again after a discard are told to the host, each once, in runs."""

from __future__ import annotations

from guest.balloon.touches import TouchTracker
from guest.mm import BuddyAllocator
from guest.mm.buddy import boot_written_free
from guest.mm.model import AllocatorModel
from pagehint.config import BARE_MEMORY


def test_runs_merge_and_each_frame_is_told_once() -> None:
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    t = TouchTracker(batch=2)
    t.reset(mm, enabled=True)  # nothing allocated: nothing queued
    assert t.runs == []
    assert t.on_alloc(10, 0) is False
    assert t.on_alloc(11, 0) is False  # extends the run
    assert t.runs == [(10, 2)]
    assert t.on_alloc(10, 0) is False and t.runs == [(10, 2)]  # already told
    assert t.on_alloc(16, 2) is True  # a second run: a full batch
    assert t.take() == [(10, 2), (16, 4)] and t.pages_sent == 6
    assert t.take() == []


def test_a_discard_makes_the_next_touch_count_again() -> None:
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    t = TouchTracker(batch=8)
    t.reset(mm, enabled=True)
    t.on_alloc(0, 1)
    t.take()
    assert t.on_alloc(0, 1) is False and t.runs == []
    t.discarded([(0, 1)])
    t.on_alloc(0, 1)
    assert t.runs == [(0, 2)]


def test_a_new_session_queues_what_is_allocated_and_off_means_nothing() -> None:
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    p = mm.alloc(3)
    t = TouchTracker(batch=8)
    t.reset(mm, enabled=True)
    assert t.runs == [(p, 8)]
    t.reset(mm, enabled=False)
    assert t.on_alloc(p, 3) is False and t.runs == []
    t.discarded([(p, 3)])  # ignored when off


def test_the_first_host_is_told_of_what_the_boot_wrote_and_freed_a_later_one_is_not() -> None:
    # As QEMU holds the memory the guest's boot wrote (its decompression buffer,
    # the copies of the kernel) until a report returns it; a host that starts over
    # holds none of the guest's free memory.
    mm = BuddyAllocator(1 << 30, model=AllocatorModel(layout="linux"))
    written = sum(1 << o for _, o in boot_written_free(mm))
    allocated = sum(1 << b.order for b in mm.blocks() if b.state == "allocated")
    assert written > 0
    t = TouchTracker(batch=1 << 20)
    t.reset(mm, enabled=True)
    assert sum(n for _, n in t.runs) == allocated + written
    t.reset(mm, enabled=True)
    assert sum(n for _, n in t.runs) == allocated


def test_a_first_session_on_shm_without_the_memory_model_is_the_first_host_too() -> None:
    # The RAM file held the boot's written pages from the start; a later session
    # with the memory model is a host that starts over.
    mm = BuddyAllocator(1 << 30, model=AllocatorModel(layout="linux"))
    allocated = sum(1 << b.order for b in mm.blocks() if b.state == "allocated")
    t = TouchTracker(batch=1 << 20)
    t.reset(mm, enabled=False)
    t.reset(mm, enabled=True)
    assert sum(n for _, n in t.runs) == allocated
