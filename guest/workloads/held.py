"""The blocks a workload holds, kept where the cyclic collector does not walk.

A memhog guest of 256 MiB holds 32,768 order-0 blocks; held as a list of
``(pfn, order)`` tuples, every full (generation 2) collection visits each entry
of every such list — the tuples themselves are untracked, the list's slots are
not. A load test's 128 guests in one process held ~2 M entries that way, and
its full collections grew with them to 40–67 ms each, every ~0.5 s (a one-off
measurement with ``gc.callbacks`` in one `pagehint loadtest --guests 256` run):
an acknowledgement that arrived during one waited as long, and they were the
run's slowest acks. An ``array`` holds machine integers: the collector visits
its type and nothing else, so its cost no longer grows with what the
workloads hold.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator

# A block is stored as pfn << ORDER_BITS | order in an unsigned 64-bit slot (orders
# are 0..10, Linux 6.1's MAX_ORDER - 1; 6 bits leave room and pfns below 2^58,
# 2^70 bytes of RAM).
ORDER_BITS = 6
_ORDER_MASK = (1 << ORDER_BITS) - 1
_PFN_LIMIT = 1 << (64 - ORDER_BITS)


class HeldBlocks:
    """An ordered collection of (pfn, order) blocks, list-like where workloads need it."""

    __slots__ = ("_codes",)

    def __init__(self, blocks: Iterable[tuple[int, int]] = ()) -> None:
        self._codes = array("Q", (_code(pfn, order) for pfn, order in blocks))

    def append(self, pfn: int, order: int) -> None:
        self._codes.append(_code(pfn, order))

    def take(self, i: int) -> tuple[int, int]:
        """Remove and return block ``i``; the last block takes its place (O(1):
        churn frees a random held block, and their order does not matter to it)."""
        codes = self._codes
        n = len(codes)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"block {i} of {n}")
        code = codes[i]
        last = codes.pop()
        if i < n - 1:
            codes[i] = last
        return code >> ORDER_BITS, code & _ORDER_MASK

    def pages(self) -> int:
        return sum(1 << (c & _ORDER_MASK) for c in self._codes)

    def __len__(self) -> int:
        return len(self._codes)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for code in self._codes:
            yield code >> ORDER_BITS, code & _ORDER_MASK

    def __repr__(self) -> str:
        return f"HeldBlocks({len(self._codes)} blocks, {self.pages()} pages)"


def _code(pfn: int, order: int) -> int:
    if not 0 <= order <= _ORDER_MASK or not 0 <= pfn < _PFN_LIMIT:
        raise ValueError(f"block ({pfn}, {order}) out of range")
    return pfn << ORDER_BITS | order
