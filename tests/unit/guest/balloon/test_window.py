"""The chain window: a chain is outstanding until answered or fenced, nothing else."""

from __future__ import annotations

from guest.balloon.window import ChainWindow
from virtqueue import codec
from virtqueue.codec import Fence, UsedMsg


async def test_answered_once_and_counted() -> None:
    w = ChainWindow(size=4)
    c = w.open([(0, 9), (512, 9)], [9, 9], "s1")
    assert w.outstanding_pages == 1024 and w.unanswered_sessions() == {"s1"}
    assert w.answer(UsedMsg(c.id)) is True
    assert w.answer(UsedMsg(c.id)) is False  # a second answer is ignored
    assert w.answer(UsedMsg(999)) is False  # so is one for no chain
    assert (await c.future).status == codec.DONE
    assert w.outstanding_pages == 0 and w.stats.answered == 1
    w.close(c)
    assert not w.chains


async def test_a_fence_settles_only_its_sessions_chains() -> None:
    w = ChainWindow(size=8)
    done = w.open([(0, 0)], [0], "old")
    lost = w.open([(1, 0)], [0], "old")
    other = w.open([(2, 0)], [0], "new")
    assert w.fence("old", Fence(known=True, done_ids=frozenset({done.id}))) == 2
    assert done.future.result().status == codec.DONE
    assert lost.future.result().status == codec.REFUSED
    assert lost.future.result().reason == "cancelled"
    assert not other.future.done() and w.unanswered_sessions() == {"new"}
    assert (w.stats.fenced_done, w.stats.fenced_not_done) == (1, 1)


async def test_a_host_with_no_record_settles_everything_as_not_done() -> None:
    w = ChainWindow()
    c = w.open([(0, 3)], [3], "gone")
    assert w.fence("gone", None) == 1
    assert c.future.result().status == codec.REFUSED


async def test_oldest_age_and_resize() -> None:
    w = ChainWindow(size=1)
    c = w.open([(0, 0)], [0], "s")
    assert w.oldest_age(now=c.sent_at + 2.5) == 2.5
    w.resize(4)  # one chain out: three more slots
    for _ in range(3):
        await w.slots.acquire()
    assert w.slots.locked()
    w.answer(UsedMsg(c.id))
    assert w.oldest_age() == 0.0
