"""The reporting queue's handling of a chain that carries its touches (Chain.touched)."""

from __future__ import annotations

import asyncio

from host.device import BalloonDevice
from host.memory.hostmem import HostMemory
from host.memory.sim import SimBackend
from host.queue import ReportingQueue
from host.sessions import Session
from tests.logs import log_lines
from tests.waiting import wait_for
from virtqueue import codec
from virtqueue import features as F

RAM = 64 << 20
REPORTING = F.mask(F.REPORTING)


def session(d: BalloonDevice, carry: bool, host_memory: bool = False) -> Session:
    offer = codec.Negotiation(
        "g", RAM, 4096, REPORTING, 0, host_memory=host_memory, touches_in_chain=carry
    )
    s, _ = d.table.negotiate(offer)
    return s


def chain(chain_id: int, touched: codec.TouchedMsg | None) -> codec.GuestMessage:
    return codec.encode_guest_msg(codec.ChainMsg(chain_id, [0], [9], touched))


def done(q: ReportingQueue, s: Session, msg: codec.GuestMessage) -> bool:
    """The message handled, and answered as a chain the host finished."""
    used = q._one_message(s, msg)
    return used is not None and codec.decode_used(used).status == codec.DONE


def test_the_host_says_it_takes_touches_in_chains_only_when_offered() -> None:
    d = BalloonDevice(SimBackend())
    assert d.accepted(session(d, carry=True), None).touches_in_chain
    d.table.end(next(iter(d.table.sessions)), "done")
    assert not d.accepted(session(d, carry=False), None).touches_in_chain
    # Nor to a guest that follows the host's memory model: its touch batches are
    # numbered, each answered by a Notice, which a chain's answer cannot carry.
    model = BalloonDevice(SimBackend(model=HostMemory(RAM // 4096, 0)))
    s = session(model, carry=True, host_memory=True)
    assert s.host_memory and not model.accepted(s, None).touches_in_chain


def test_a_chains_touches_are_applied_before_its_ranges() -> None:
    # Frames 0..1023 touched, then the chain discards 0..511 (order 9): what stays
    # resident is the touches the chain did not cover. Had the touches come after
    # the chain, all 1024 would be resident.
    d = BalloonDevice(SimBackend())
    q = ReportingQueue(d)
    s = session(d, carry=True)
    assert done(q, s, chain(1, codec.TouchedMsg([0], [1024])))
    assert s.ram.resident_pages() == 512
    assert s.totals.touched_pages == 1024
    assert not d.metrics.refusals


def test_touches_in_a_chain_are_refused_unless_negotiated_and_unnumbered() -> None:
    # Refused (counted, nothing applied), the chain handled still; the log says which rule.
    lines = log_lines()
    d = BalloonDevice(SimBackend())
    q = ReportingQueue(d)
    s = session(d, carry=False)
    assert done(q, s, chain(1, codec.TouchedMsg([1024], [8])))
    assert s.ram.resident_pages() == 0
    assert d.metrics.refusals == {"touched_in_chain_unnegotiated": 1}
    d.table.end(s.token, "done")
    s = session(d, carry=True)
    numbered = (codec.TouchedMsg([1024], [8], seq=1), codec.TouchedMsg([1024], [8], 0, 3))
    for chain_id, touched in enumerate(numbered, start=2):
        assert q._one_message(s, chain(chain_id, touched)) is not None
    assert s.ram.resident_pages() == 0
    assert d.metrics.refusals["touched_in_chain_numbered"] == 2
    # A session that follows the host's memory model gets a Notice for every touch
    # batch, which a chain's answer cannot carry: its touches come on their own.
    s.host_memory = True
    assert q._one_message(s, chain(4, codec.TouchedMsg([1024], [8]))) is not None
    assert d.metrics.refusals["touched_in_chain_numbered"] == 3
    s.host_memory = False
    assert s.ram.resident_pages() == 0
    # A bad run in them is refused as in a Touched message of its own.
    q._one_message(s, chain(5, codec.TouchedMsg([0, 1], [1])))
    assert d.metrics.refusals["touched_malformed"] == 1
    d.problems.flush(force=True)
    assert any("refused: not negotiated" in line for line in lines), lines
    assert any("refused: they belong to the host memory model" in line for line in lines), lines


async def test_a_chains_touches_held_by_latency_are_dropped_if_its_session_ended() -> None:
    # --latency holds the chain, touches and all; a fence ending the session while
    # it waits cancels the chain, and its touches with it (nothing booked).
    d = BalloonDevice(SimBackend())
    q = ReportingQueue(d, latency=0.05)
    s = session(d, carry=True)
    held = asyncio.create_task(q._delayed_message(s, chain(1, codec.TouchedMsg([1024], [16]))))
    await wait_for(lambda: q.inflight == 1, 2.0, "the chain held")
    d.table.end(s.token, "fenced")
    assert await held is None
    assert s.totals.touched_pages == 0 and s.ram.resident_pages() == 0
