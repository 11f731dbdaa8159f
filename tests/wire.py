"""Guest messages built from (pfn, order) ranges and (pfn, count) runs: the tests'
shorthand for what the driver sends (virtqueue/codec.py encodes the driver's own)."""

from __future__ import annotations

from collections.abc import Sequence

from virtqueue import codec


def encode_chain(chain_id: int, ranges: Sequence[tuple[int, int]]) -> codec.GuestMessage:
    return codec.encode_chain_msg(
        codec.ChainMsg(chain_id, [p for p, _ in ranges], [o for _, o in ranges])
    )


def encode_touched(runs: Sequence[tuple[int, int]], seq: int = 0) -> codec.GuestMessage:
    return codec.encode_touched_msg(
        codec.TouchedMsg([p for p, _ in runs], [c for _, c in runs], seq)
    )
