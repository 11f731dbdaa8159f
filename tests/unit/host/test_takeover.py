"""Who may take a guest id: a fenced session is spent once its successor has been
used, a negotiation whose answer was lost may be retried, and a guest that lost its
id is told how, truthfully (plain text checks no identity)."""

from __future__ import annotations

import pytest

from host.device import BalloonDevice
from host.memory.sim import SimBackend
from host.sessions import GIVES_WAY, Session, SessionInUse
from virtqueue import features as F
from virtqueue.codec import Fence, Negotiation

RAM = 64 << 20
REPORTING = F.mask(F.REPORTING)


def negotiate(
    d: BalloonDevice, previous: str = "", identity: str | None = None
) -> tuple[Session, Fence | None]:
    return d.table.negotiate(Negotiation("g", RAM, 4096, REPORTING, 0, previous), identity)


def test_a_fenced_session_cannot_take_its_id_back_from_a_used_successor() -> None:
    d = BalloonDevice(SimBackend())
    first, _ = negotiate(d)
    second, _ = negotiate(d, previous=first.token)  # the guest reconnects and fences
    d.table.session(second.token)  # ... and uses its new session (a stream, a Stats call)
    second.last_seen -= 60  # then goes quiet (paused) far past the 5 s staleness
    # An older copy of the guest still holding the fenced session names it: spent.
    with pytest.raises(SessionInUse) as e:
        negotiate(d, previous=first.token)
    assert str(e.value).endswith(GIVES_WAY) and "resumed already" in str(e.value)
    assert not second.ended and d.table.by_guest["g"] == second.token
    assert d.metrics.turned_away["in_use"] == 1


def test_a_negotiation_whose_answer_was_lost_may_be_retried() -> None:
    d = BalloonDevice(SimBackend())
    first, _ = negotiate(d)
    assert d.handle_report(first, 7, [0], [9]) is not None  # DONE before the break
    lost, _ = negotiate(d, previous=first.token)  # its answer never reached the guest
    # The guest tries again naming the same session, at once: the successor was never
    # used, so nobody holds it, and the retry gets the fence it needs.
    third, fence = negotiate(d, previous=first.token)
    assert lost.ended and not third.ended
    assert fence is not None and fence.known and fence.done_ids == frozenset({7})
    # Had the answer reached another copy of the guest after all, that copy is told why.
    with pytest.raises(SessionInUse) as e:
        negotiate(d, previous=lost.token)
    assert "resumed the same session" in str(e.value) and str(e.value).endswith(GIVES_WAY)


def test_a_guest_that_lost_its_id_without_identity_is_not_told_of_one() -> None:
    d = BalloonDevice(SimBackend())
    paused, _ = negotiate(d)
    d.table.session(paused.token)
    paused.last_seen -= 60  # silent past the staleness: a new process may take the id
    negotiate(d)  # a new process, no previous session, no identity (plain text)
    assert paused.ended
    with pytest.raises(SessionInUse) as e:
        negotiate(d, previous=paused.token)  # the paused process comes back
    message = str(e.value)
    assert "same identity" not in message, message
    assert "checks no identity" in message and "silent for 5 s" in message
    assert "taken over" in message and message.endswith(GIVES_WAY)


def test_a_take_over_by_the_same_proven_identity_says_so() -> None:
    d = BalloonDevice(SimBackend())
    first, _ = negotiate(d, identity="g")
    negotiate(d, identity="g")
    with pytest.raises(SessionInUse) as e:
        negotiate(d, previous=first.token, identity="g")
    assert str(e.value) == (
        "guest id 'g' was taken over by another client with the same identity; this one gives way"
    )
