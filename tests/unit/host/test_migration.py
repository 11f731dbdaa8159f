"""The host's side of a snapshot: what it takes from a guest's dirty log, and the
copy's bookkeeping (the end-to-end runs: tests/integration/test_migrate.py)."""

from __future__ import annotations

import os
from pathlib import Path

from host.balloon_state import SnapLink
from host.device import BalloonDevice
from host.memory.sim import SimBackend
from host.migration import Copier, take_snapshot_answer
from host.sessions import Session
from virtqueue import features as F
from virtqueue.codec import DirtyMsg, ImageCheckedMsg, Negotiation

RAM = 64 << 20
PAGES = RAM // 4096


def _session() -> Session:
    d = BalloonDevice(SimBackend())
    s, _ = d.table.negotiate(
        Negotiation("g", RAM, 4096, F.mask(F.REPORTING), 0, balloon=True, migration=True)
    )
    assert s.balloon is not None
    s.balloon.snap = SnapLink(dirty_round=2, busy=True)
    return s


def test_a_round_whose_log_is_more_than_the_guests_ram_is_refused() -> None:
    s = _session()
    assert take_snapshot_answer(s, DirtyMsg(2, [(0, PAGES)], more=True)) == ""
    assert take_snapshot_answer(s, DirtyMsg(2, [(0, 1)])) == "dirty_log_too_big"


def test_answers_out_of_turn_are_refused() -> None:
    s = _session()
    assert take_snapshot_answer(s, DirtyMsg(3, [])) == "dirty_round"
    assert take_snapshot_answer(s, DirtyMsg(2, [(PAGES, 1)])) == "out_of_range"
    assert take_snapshot_answer(s, DirtyMsg(2, [(0, 0)])) == "out_of_range"
    assert take_snapshot_answer(s, DirtyMsg(2, [])) == ""
    assert take_snapshot_answer(s, DirtyMsg(2, [])) == "dirty_round"  # the round is whole
    assert s.balloon is not None and s.balloon.snap is not None
    s.balloon.snap.busy = False
    assert take_snapshot_answer(s, ImageCheckedMsg("x", 1, 0)) == "no_snapshot"


def test_unsafe_marking_keeps_trusted_pages_unsent(tmp_path: Path) -> None:
    n = 16
    ram = os.open(tmp_path / "ram", os.O_RDWR | os.O_CREAT, 0o600)
    img = os.open(tmp_path / "img", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(ram, n * 4096)
    trusted = bytearray(n)
    trusted[4:8] = b"\x01" * 4
    c = Copier(ram, img, bytearray(n), trusted, bytearray(n))
    c.mark_dirty([(0, n)])
    assert c.to_send == bytearray(b"\x01" * 4 + b"\x00" * 4 + b"\x01" * 8)
    c.copy_chunk(0, n)
    assert c.copied == 12 and c.zero == 12 and c.sent_once.count(0) == 4
    os.close(ram)
    os.close(img)
