"""The checks on every chain: the host trusts nothing a guest sends.

A chain with a range outside the guest's RAM, misaligned to its order, of a bad
order, below the device's minimum order, overlapping or duplicating another
range of the chain, with more ranges than its session's capacity, or with
mismatched arrays is refused whole (``ChainRefused``, with the rule it broke),
before anything of it is discarded. The passing case is one tight pass; only a
failing chain is walked again, range by range, to name the first rule it broke.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import NoReturn

from host.sessions import Session
from virtqueue.contract import BLOCK_PAGES, MAX_ORDER


def _ascending_disjoint(
    pairs: Iterable[tuple[int, int]],
) -> tuple[list[tuple[int, int]], int] | None:
    """(ranges as (pfn, npages), end of the last) if every (pfn, order) is aligned and
    starts at or after the previous one's end; None otherwise. IndexError for an
    order above MAX_ORDER."""
    sizes = BLOCK_PAGES
    ranges: list[tuple[int, int]] = []
    append = ranges.append
    end = 0
    for pfn, order in pairs:
        size = sizes[order]
        if pfn < end or pfn & (size - 1):
            return None
        end = pfn + size
        append((pfn, size))
    return ranges, end


class ChainRefused(Exception):
    """A chain failed a check. ``reason`` is a short key for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def check_chain(
    s: Session, pfns: Sequence[int], orders: Sequence[int], min_order: int = 0
) -> list[tuple[int, int]]:
    """Validate a chain; returns its ranges as (pfn, npages) sorted by pfn.

    This runs once per chain on the host's only thread, so the passing case
    is one sort and one tight loop; only a failing chain is walked again,
    range by range, to name the first rule it broke.
    """
    n = len(pfns)
    if n != len(orders):
        raise ChainRefused("malformed", f"{n} pfns but {len(orders)} orders: arrays must match")
    if not n:
        raise ChainRefused("empty", "a chain must carry at least one range")
    if n > s.capacity:
        raise ChainRefused(
            "too_many_ranges", f"{n} ranges exceed the negotiated capacity {s.capacity}"
        )
    # Guests send their ranges in ascending pfn order (the driver sorts them), so
    # one tight pass in the order given usually settles it; a chain that is not
    # ascending is sorted and passed again. Failure re-walks it to name the rule.
    try:
        found = _ascending_disjoint(zip(pfns, orders, strict=True))
        if found is None:
            found = _ascending_disjoint(sorted(zip(pfns, orders, strict=True)))
    except IndexError:  # an order above MAX_ORDER
        found = None
    if found is not None and found[1] <= s.nr_pages and min(orders) >= min_order:
        return found[0]
    _name_broken_rule(s, pfns, orders, min_order)


def _name_broken_rule(
    s: Session, pfns: Sequence[int], orders: Sequence[int], min_order: int
) -> NoReturn:
    """Walk a chain that failed the fast check; raise for the first rule it breaks."""
    limit = s.nr_pages
    for i, (pfn, order) in enumerate(zip(pfns, orders, strict=True)):
        if order > MAX_ORDER:
            raise ChainRefused("bad_order", f"range {i}: order {order} is above {MAX_ORDER}")
        if order < min_order:
            raise ChainRefused(
                "below_min_order",
                f"range {i}: order {order} is below the device's {min_order}",
            )
        n = 1 << order
        if pfn & (n - 1):
            raise ChainRefused(
                "misaligned", f"range {i}: pfn {pfn:#x} is not aligned to order {order}"
            )
        if pfn < 0 or pfn + n > limit:  # (negative: only from in-process callers)
            raise ChainRefused(
                "out_of_range",
                f"range {i}: pfn {pfn:#x} order {order} is outside guest RAM ({limit} pages)",
            )
    ordered = sorted((pfn, 1 << order) for pfn, order in zip(pfns, orders, strict=True))
    for (a, an), (b, _bn) in itertools.pairwise(ordered):
        if b < a + an:
            kind = "duplicate" if a == b else "overlap"
            raise ChainRefused(kind, f"ranges at pfn {a:#x} and {b:#x} {kind}")
    raise AssertionError("a chain that fails the array checks has a bad range")
