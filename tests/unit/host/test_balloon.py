"""The rest of the balloon on the host: the rules a guest's pages must keep, the
stats by Linux's names, and the Balloon call from outside (who may, what it says)."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest

from host.balloon import handle_pages, pages_problem, set_target, take_stats
from host.balloon_state import HostBalloon
from host.device import BalloonDevice
from host.memory.sim import SimBackend
from host.server import HostServer
from tests.unit.host.conftest import TOKENS
from virtqueue import codec
from virtqueue import features as F
from virtqueue.codec import Negotiation, PagesMsg, StatsMsg

RAM = 64 << 20


@pytest.mark.parametrize(
    ("inflate", "pfns", "held", "reason"),
    [
        (True, [], set(), "empty"),
        (True, list(range(257)), set(), "too_many_pages"),  # VIRTIO_BALLOON_ARRAY_PFNS_MAX
        (True, [1, 1], set(), "duplicate"),
        (True, [16384], set(), "out_of_range"),
        (True, [5], {5}, "already_inflated"),
        (False, [5], set(), "not_inflated"),
        (True, [5, 6], set(), ""),
        (False, [5], {5}, ""),
    ],
)
def test_the_rules_a_guests_pages_keep(
    inflate: bool, pfns: list[int], held: set[int], reason: str
) -> None:
    assert pages_problem(HostBalloon(pages=set(held)), RAM // 4096, inflate, pfns) == reason


def test_an_inflate_is_discarded_a_refused_one_not_at_all() -> None:
    d = BalloonDevice(SimBackend())
    s, _ = d.table.negotiate(Negotiation("g", RAM, 4096, F.mask(F.REPORTING), 0, balloon=True))
    s.ram.touched([(0, 512)])  # resident
    assert handle_pages(s, PagesMsg(True, 1, [0, 1, 2], 3)).discarded_pages == 3
    assert s.ram.resident_pages() == 509
    bad = handle_pages(s, PagesMsg(True, 2, [3, 2], 5))  # 2 is in the balloon already
    assert (bad.status, bad.reason) == (codec.REFUSED, "already_inflated")
    assert s.ram.resident_pages() == 509  # nothing of it discarded
    done = handle_pages(s, PagesMsg(False, 3, [1], 2))
    assert done.status == codec.DONE and s.balloon is not None and s.balloon.pages == {0, 2}
    assert s.balloon.actual_pages == 2


def test_an_older_guest_has_no_balloon_and_its_pages_are_refused() -> None:
    d = BalloonDevice(SimBackend(), deflate_on_oom=True)
    s, _ = d.table.negotiate(
        Negotiation("g", RAM, 4096, F.mask(F.REPORTING, F.STATS_VQ, F.DEFLATE_ON_OOM), 0)
    )
    assert s.balloon is None and s.features == F.mask(F.REPORTING)  # nothing more accepted
    assert handle_pages(s, PagesMsg(True, 1, [0], 1)).reason == "no_balloon"


def test_stats_are_kept_by_the_names_linux_gives_them() -> None:
    d = BalloonDevice(SimBackend())
    s, _ = d.table.negotiate(Negotiation("g", RAM, 4096, F.mask(F.REPORTING), 0, balloon=True))
    take_stats(s, StatsMsg([4, 5, 11, 99], [1, 2, 3, 4]))
    assert s.balloon is not None
    assert s.balloon.stats == {
        "free-memory": 1,
        "total-memory": 2,
        "alloc-stalls": 3,
        "tag-99": 4,
    }


def _as(who: str) -> tuple[tuple[str, str], ...]:
    return ((codec.TOKEN_KEY, TOKENS[who]),)


async def test_only_the_admin_sets_a_target_and_an_unknown_guest_is_not_found(
    token_host: tuple[HostServer, codec.AioBalloonStub],
) -> None:
    server, stub = token_host
    offer = Negotiation("g1", RAM, 4096, F.mask(F.REPORTING), 0, balloon=True)
    await stub.Negotiate(codec.encode_negotiate(offer), metadata=_as("g1"))
    ask = codec.encode_balloon_request("g1", 32 << 20)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Balloon(ask, metadata=_as("g1"))  # a guest must not set targets
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    b = codec.decode_balloon_status(await stub.Balloon(ask, metadata=_as("admin")))
    assert (b.guest_id, b.balloon, b.target_bytes, b.actual_bytes) == ("g1", True, 32 << 20, 0)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Balloon(codec.encode_balloon_request("nobody", None), metadata=_as("admin"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as e:  # a line break would forge a log line
        await stub.Balloon(codec.encode_balloon_request("x\ny", 1), metadata=_as("admin"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # kept for the guest id: its next session starts with it
    assert server.device.table.targets["g1"] == (32 << 20) // 4096


def test_the_host_counts_actual_itself_and_refuses_odd_stats() -> None:
    d = BalloonDevice(SimBackend())
    s, _ = d.table.negotiate(Negotiation("g", RAM, 4096, F.mask(F.REPORTING), 0, balloon=True))
    handle_pages(s, PagesMsg(True, 1, [0, 1, 2], 2**64 - 1))  # a guest's word, not taken
    assert s.balloon is not None and s.balloon.actual_pages == 3
    assert take_stats(s, StatsMsg([4, 5], [1])) == "malformed"
    assert take_stats(s, StatsMsg(list(range(65)), [0] * 65)) == "too_many_stats"
    assert s.balloon.stats == {}


def test_a_target_needs_a_live_guest_with_a_balloon_and_nothing_is_kept_otherwise() -> None:
    d = BalloonDevice(SimBackend())
    assert set_target(d.table, "late", 1 << 20) is None and "late" not in d.table.targets
    d.table.negotiate(Negotiation("old", RAM, 4096, F.mask(F.REPORTING), 0))  # no balloon
    assert set_target(d.table, "old", 1 << 20) is None and "old" not in d.table.targets
    s, _ = d.table.negotiate(Negotiation("g", RAM, 4096, F.mask(F.REPORTING), 0, balloon=True))
    assert set_target(d.table, "g", 1 << 40) is s and s.balloon is not None
    assert s.balloon.target_pages == RAM // 4096  # at most its RAM
