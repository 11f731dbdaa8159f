from __future__ import annotations

from tests.wire import encode_chain, encode_touched
from virtqueue import codec
from virtqueue import features as F


def test_chain_roundtrip_uses_packed_parallel_arrays() -> None:
    ranges = [(512, 9), (1024, 10), (7, 0)]
    msg = encode_chain(42, ranges)
    decoded = codec.decode_guest_message(msg)
    assert isinstance(decoded, codec.ChainMsg)
    assert decoded.id == 42
    assert list(zip(decoded.pfns, decoded.orders, strict=True)) == ranges
    # 3 ranges as packed fixed64 + packed varints: far smaller than sub-messages
    assert len(msg.SerializeToString()) < 3 * 12 + 16


def test_touched_and_used_roundtrip() -> None:
    decoded = codec.decode_guest_message(encode_touched([(0, 512), (4096, 1)]))
    assert isinstance(decoded, codec.TouchedMsg)
    assert list(decoded.pfns) == [0, 4096] and list(decoded.counts) == [512, 1]
    used = codec.UsedMsg(7, 1024, codec.DISCARD_FAILED, "discard_failed", "EIO", 5, 4096)
    assert codec.decode_used(codec.encode_used(used)) == used
    assert codec.decode_used(codec.encode_used(codec.UsedMsg(8))).status == codec.DONE


def test_negotiation_and_stats_roundtrip() -> None:
    n = codec.Negotiation("g", 1 << 30, 4096, F.mask(F.REPORTING, F.PAGE_POISON), 0xAA, "old")
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
    assert codec.decode_guest_message(encode_chain(1, [])) is not None


# ---- issue 23: the host's memory model on the wire ------------------------------------


def test_host_memory_fields_roundtrip_and_default_off() -> None:
    n = codec.Negotiation("g", 1 << 30, 4096, F.mask(F.REPORTING), 0, host_memory=True)
    assert codec.decode_negotiate(codec.encode_negotiate(n)) == n
    assert codec.Negotiation("g", 1 << 30, 4096, 0, 0).host_memory is False
    a = codec.Accepted(0, 64, 32, "tok", "sim", "", "free", host_memory=True)
    assert codec.decode_accepted(codec.encode_accepted(a)).host_memory is True
    assert codec.decode_accepted(codec.encode_accepted(a)) == a
    assert codec.Accepted(0, 64, 32, "tok", "sim", "", "free").host_memory is False


def test_touched_carries_its_batch_number() -> None:
    t = codec.TouchedMsg([0, 4096], [512, 1], 7)
    decoded = codec.decode_guest_message(codec.encode_touched_msg(t))
    assert isinstance(decoded, codec.TouchedMsg)
    assert (list(decoded.pfns), list(decoded.counts), decoded.seq) == ([0, 4096], [512, 1], 7)
    old_style = codec.decode_guest_message(encode_touched([(3, 1)]))
    assert isinstance(old_style, codec.TouchedMsg) and old_style.seq == 0
    assert codec.TouchedMsg([1], [1]).seq == 0


def test_notice_roundtrips_and_is_told_apart_from_a_chains_answer() -> None:
    n = codec.NoticeMsg([(512, 512), (4096, 3)], 5, 8500, 100, 12)
    wire = codec.encode_notice(n)
    assert wire.id == 0 and wire.HasField("notice")
    assert codec.decode_used(codec.Used.FromString(wire.SerializeToString())) == n
    # eviction only: no batch settled, no delay; still a Notice, not a DONE for chain 0
    bare = codec.decode_used(codec.encode_notice(codec.NoticeMsg([(9, 1)], 0, 0, 0, 0)))
    assert isinstance(bare, codec.NoticeMsg) and bare.evicted == [(9, 1)]
    assert isinstance(codec.decode_used(codec.encode_used(codec.UsedMsg(0))), codec.UsedMsg)


def test_memory_model_figures_roundtrip_and_old_callers_still_build_them() -> None:
    g = codec.GuestFigures(
        "g",
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
        9,
        10,
        False,
        swapped_bytes=4096,
        major_faults=3,
        minor_faults=4,
    )
    h = codec.HostFigures(
        [g],
        0,
        2,
        2,
        0,
        6,
        1,
        self_guest=g,
        host_memory_bytes=1 << 30,
        swap_bytes=1 << 29,
        swap_used_bytes=8192,
        swap_ins=5,
        swap_outs=6,
        oom_kills=1,
        vmm_overhead_bytes=1 << 26,
    )
    assert codec.decode_host_stats(codec.encode_host_stats(h)) == h
    old = codec.HostFigures([], 0, 0, 0, 0, 0, 0)
    assert (old.host_memory_bytes, old.swap_bytes, old.oom_kills) == (0, 0, 0)
    assert codec.GuestFigures("g", 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, True).major_faults == 0


def test_a_chain_carries_its_touches_and_a_plain_one_none() -> None:
    touched = codec.TouchedMsg([0, 4096], [512, 1])
    decoded = codec.decode_guest_message(
        codec.encode_guest_msg(codec.ChainMsg(9, [512], [9], touched))
    )
    assert isinstance(decoded, codec.ChainMsg) and decoded.touched is not None
    assert (list(decoded.touched.pfns), list(decoded.touched.counts)) == ([0, 4096], [512, 1])
    assert (decoded.id, list(decoded.pfns), list(decoded.orders)) == (9, [512], [9])
    # An empty batch is still a batch sent (present, not absent).
    empty = codec.decode_guest_message(
        codec.encode_chain_msg(codec.ChainMsg(1, [0], [9], codec.TouchedMsg([], [])))
    )
    assert isinstance(empty, codec.ChainMsg) and empty.touched is not None
    plain = codec.decode_guest_message(encode_chain(1, [(0, 9)]))
    assert isinstance(plain, codec.ChainMsg) and plain.touched is None


def test_touches_in_chain_is_negotiated_and_off_by_default() -> None:
    n = codec.Negotiation("g", 1 << 30, 4096, F.mask(F.REPORTING), 0, touches_in_chain=True)
    assert codec.decode_negotiate(codec.encode_negotiate(n)) == n
    assert codec.Negotiation("g", 1 << 30, 4096, 0, 0).touches_in_chain is False
    a = codec.Accepted(0, 64, 32, "tok", "sim", "", "free", touches_in_chain=True)
    assert codec.decode_accepted(codec.encode_accepted(a)) == a
    assert codec.Accepted(0, 64, 32, "tok", "sim", "", "free").touches_in_chain is False
