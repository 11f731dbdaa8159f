from __future__ import annotations

from virtqueue import codec
from virtqueue import features as F


def test_chain_roundtrip_uses_packed_parallel_arrays() -> None:
    ranges = [(512, 9), (1024, 10), (7, 0)]
    msg = codec.encode_chain(42, ranges)
    decoded = codec.decode_guest_message(msg)
    assert isinstance(decoded, codec.ChainMsg)
    assert decoded.id == 42
    assert list(zip(decoded.pfns, decoded.orders, strict=True)) == ranges
    # 3 ranges as packed fixed64 + packed varints: far smaller than sub-messages
    assert len(msg.SerializeToString()) < 3 * 12 + 16


def test_touched_and_used_roundtrip() -> None:
    decoded = codec.decode_guest_message(codec.encode_touched([(0, 512), (4096, 1)]))
    assert isinstance(decoded, codec.TouchedMsg)
    assert list(decoded.pfns) == [0, 4096] and list(decoded.counts) == [512, 1]
    used = codec.UsedMsg(7, 1024, codec.DISCARD_FAILED, "discard_failed", "EIO", 5, 4096)
    assert codec.decode_used(codec.encode_used(used)) == used
    assert codec.decode_used(codec.encode_used(codec.UsedMsg(8))).status == codec.DONE


def test_negotiation_and_stats_roundtrip() -> None:
    n = codec.Negotiation("g", 1 << 30, 4096, F.mask(F.REPORTING, F.PAGE_POISON), 0xAA, 32, "old")
    assert codec.decode_negotiate(codec.encode_negotiate(n)) == n
    a = codec.Accepted(
        F.mask(F.REPORTING),
        64,
        32,
        "tok",
        "shm",
        "/dev/shm/x.ram",
        "dontneed",
        min_order=9,
        fence=codec.Fence(True, frozenset({3, 9})),
        instance="abc",
    )
    assert codec.decode_accepted(codec.encode_accepted(a)) == a
    g = codec.GuestFigures("g", 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, True)
    h = codec.HostFigures([g], 0, 2, 2, 0, 6, 1, {"overlap": 1}, "sim", g)
    assert codec.decode_host_stats(codec.encode_host_stats(h)) == h


def test_feature_bits_follow_virtio_numbering() -> None:
    assert (F.STATS_VQ, F.DEFLATE_ON_OOM, F.FREE_PAGE_HINT, F.PAGE_POISON, F.REPORTING) == (
        1,
        2,
        3,
        4,
        5,
    )
    assert F.describe(F.mask(F.REPORTING, F.PAGE_POISON)) == "PAGE_POISON,REPORTING"
    assert codec.decode_guest_message(codec.encode_chain(1, [])) is not None
