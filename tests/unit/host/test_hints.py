"""Free page hinting on the host, as Firecracker's device runs it: run ids, which
blocks are taken (and discarded), STOP answered with DONE, and the rules a
message of blocks keeps."""

from __future__ import annotations

import pytest

from host import hints
from host.balloon_state import CMD_ID_DONE, CMD_ID_STOP
from host.device import BalloonDevice
from host.memory.sim import SimBackend
from host.sessions import Session
from virtqueue import features as F
from virtqueue.codec import HintMsg, Negotiation

RAM = 64 << 20
ORDER = 10


def _session(hint: bool = True) -> Session:
    d = BalloonDevice(SimBackend(), free_page_hint=hint)
    feats = F.mask(F.REPORTING, F.STATS_VQ, F.FREE_PAGE_HINT)
    s, _ = d.table.negotiate(Negotiation("g", RAM, 4096, feats, 0, balloon=True))
    return s


def test_the_bit_is_negotiated_only_where_the_host_offers_it() -> None:
    assert hints.hinting(_session(True))
    assert not hints.hinting(_session(False))
    assert hints.handle_hint(_session(False), HintMsg(True, 2)) == "no_hinting"


def test_runs_take_fresh_ids_never_0_or_1() -> None:
    s = _session()
    hints.start(s, True)
    assert hints.state(s).host_cmd == 2
    hints.start(s, True)
    assert hints.state(s).host_cmd == 3
    assert s.balloon is not None
    s.balloon.hint.last_cmd_id = 0xFFFFFFFF
    hints.start(s, True)
    assert hints.state(s).host_cmd == 2  # wrapped past the reserved ids
    hints.stop(s)
    assert hints.state(s).host_cmd == CMD_ID_DONE


def test_blocks_of_the_current_run_are_recorded_not_discarded_and_stop_answers_done() -> None:
    s = _session()
    s.ram.touched([(0, RAM // 4096)])
    hints.start(s, True)
    assert hints.handle_hint(s, HintMsg(True, 2)) == ""
    assert hints.handle_hint(s, HintMsg(False, 0, [0, 1024], ORDER)) == ""
    # Linux's shrinker may reuse a block before the host sees it: never discarded.
    assert s.ram.resident_pages() == RAM // 4096
    assert s.balloon is not None and s.balloon.hint.blocks == {0, 1024}
    st = hints.state(s)
    assert (st.guest_cmd, st.hinted_pages) == (2, 2048)
    assert hints.handle_hint(s, HintMsg(True, CMD_ID_STOP)) == ""
    assert hints.state(s).host_cmd == CMD_ID_DONE  # acknowledge_on_stop


def test_without_ack_on_stop_the_run_stays_until_the_host_stops_it() -> None:
    s = _session()
    hints.start(s, False)
    hints.handle_hint(s, HintMsg(True, 2))
    hints.handle_hint(s, HintMsg(True, CMD_ID_STOP))
    assert hints.state(s).host_cmd == 2


def test_blocks_for_no_run_or_an_old_one_are_ignored_and_counted() -> None:
    s = _session()
    s.ram.touched([(0, RAM // 4096)])
    assert hints.handle_hint(s, HintMsg(False, 0, [0], ORDER)) == ""  # no run
    hints.start(s, True)
    hints.handle_hint(s, HintMsg(True, 2))
    hints.start(s, True)  # run 3 while the guest still answers 2
    assert hints.handle_hint(s, HintMsg(False, 0, [1024], ORDER)) == ""
    assert s.balloon is not None and s.balloon.hint.ignored == 2
    assert not s.balloon.hint.blocks


@pytest.mark.parametrize(
    ("pfns", "order", "why"),
    [
        ([], ORDER, "empty"),
        ([0] * 513, ORDER, "too_many_blocks"),
        ([0], 11, "bad_order"),
        ([0], 9, "bad_order"),  # the driver hints only MAX_ORDER blocks
        ([512], ORDER, "out_of_range"),  # not aligned to its order
        ([RAM // 4096], ORDER, "out_of_range"),
        ([0, 0], ORDER, "duplicate"),
    ],
)
def test_a_message_that_breaks_a_rule_is_refused_whole(
    pfns: list[int], order: int, why: str
) -> None:
    s = _session()
    hints.start(s, True)
    hints.handle_hint(s, HintMsg(True, 2))
    assert hints.handle_hint(s, HintMsg(False, 0, pfns, order)) == why
    assert hints.state(s).hinted_pages == 0


def test_a_block_may_come_again_in_a_run_after_the_shrinker_gave_it_back() -> None:
    s = _session()
    hints.start(s, True)
    hints.handle_hint(s, HintMsg(True, 2))
    assert hints.handle_hint(s, HintMsg(False, 0, [0], ORDER)) == ""
    assert hints.handle_hint(s, HintMsg(False, 0, [0], ORDER)) == ""
    assert hints.state(s).hinted_pages == 1 << ORDER  # counted once


def test_the_stop_of_a_replaced_run_does_not_end_the_new_one() -> None:
    s = _session()
    hints.start(s, True)
    hints.handle_hint(s, HintMsg(True, 2))
    hints.start(s, True)  # run 3, before the guest's STOP of run 2 came in
    hints.handle_hint(s, HintMsg(True, CMD_ID_STOP))
    assert hints.state(s).host_cmd == 3  # not DONE: run 3 goes on
    hints.handle_hint(s, HintMsg(True, 3))
    hints.handle_hint(s, HintMsg(True, CMD_ID_STOP))
    assert hints.state(s).host_cmd == CMD_ID_DONE
