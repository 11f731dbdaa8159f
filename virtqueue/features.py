"""virtio-balloon feature bits (VIRTIO 1.2, 5.5.3), by bit number."""

from __future__ import annotations

MUST_TELL_HOST = 0
STATS_VQ = 1
DEFLATE_ON_OOM = 2
FREE_PAGE_HINT = 3
PAGE_POISON = 4
REPORTING = 5

NAMES = {
    MUST_TELL_HOST: "MUST_TELL_HOST",
    STATS_VQ: "STATS_VQ",
    DEFLATE_ON_OOM: "DEFLATE_ON_OOM",
    FREE_PAGE_HINT: "FREE_PAGE_HINT",
    PAGE_POISON: "PAGE_POISON",
    REPORTING: "REPORTING",
}


def mask(*bits: int) -> int:
    m = 0
    for b in bits:
        m |= 1 << b
    return m


def has(features: int, bit: int) -> bool:
    return bool(features >> bit & 1)


def describe(features: int) -> str:
    names = [name for bit, name in sorted(NAMES.items()) if has(features, bit)]
    return ",".join(names) or "none"
