"""The sim ledger is sparse: a session costs little until its guest touches memory,
what the ledgers cost is charged against the host's memory limit, and the sparse
ledger answers exactly as a flat one (one byte per frame) did."""

from __future__ import annotations

import errno
import random

import pytest

from host.device import BalloonDevice
from host.memory.sim import ABSENT, CHUNK, CHUNK_BYTES, LAZY, RESIDENT, SimBackend, SimRam
from host.sessions import LimitReached
from virtqueue import features as F
from virtqueue.codec import Negotiation

GIB = 1 << 30
PAGES_64G = (64 * GIB) // 4096


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_1024_sessions_of_64_gib_cost_little_until_touched() -> None:
    # A flat ledger was 16 MiB per 64 GiB guest at once: 1,024 sessions, 16 GiB from one
    # client. Checked as they open, so a regression fails after a few dozen sessions,
    # long before the machine runs out.
    budget = 256 << 20
    d = BalloonDevice(SimBackend(), max_sessions=1024)
    before = rss_bytes()
    for i in range(1024):
        d.table.negotiate(Negotiation(f"g{i}", 64 * GIB, 4096, F.mask(F.REPORTING), 0))
        if i % 16 == 15:
            grown = rss_bytes() - before
            assert grown < budget, f"{i + 1} sessions of 64 GiB grew RSS by {grown >> 20} MiB"
    grown = rss_bytes() - before
    assert len(d.table.sessions) == 1024
    assert grown < budget, grown
    # What the backend charges is what they cost, give or take (a few KiB a session).
    charged = d.backend.overhead_bytes()
    assert charged >= grown // 2, (charged, grown)
    for s in list(d.table.sessions):
        d.table.end(s, "test over")
    assert d.backend.overhead_bytes() == 0


def test_a_chunk_is_allocated_on_first_touch_and_kept_until_the_end() -> None:
    b = SimBackend()
    r = b.attach("g", PAGES_64G, 4096)
    assert isinstance(r, SimRam)
    base = b.ledger_bytes
    assert r.discard([(0, 1024)]) == 0 and b.ledger_bytes == base  # nothing to discard
    r.touched([(0, 1)])
    assert b.ledger_bytes == base + CHUNK_BYTES
    r.touched([(5, 10), (CHUNK - 1, 2)])  # the second run crosses into the next chunk
    assert b.ledger_bytes == base + 2 * CHUNK_BYTES
    assert r.resident_pages() == 13
    assert r.discard([(0, 1024)]) == 11
    assert b.ledger_bytes == base + 2 * CHUNK_BYTES  # kept: charged until the session ends
    r.release()
    assert b.ledger_bytes == 0 and b.resident == 0


def test_ledgers_are_charged_against_the_memory_limit() -> None:
    # A memory limit of 64 pages (256 KiB): room for the ledger of a few sessions and
    # some chunks, however little guest memory is resident.
    b = SimBackend(capacity_pages=64)
    rams = []
    with pytest.raises(OSError) as full:
        for i in range(1000):
            rams.append(b.attach(f"g{i}", PAGES_64G, 4096))
    assert full.value.errno == errno.ENOMEM and 0 < len(rams) < 1000
    assert b.ledger_bytes <= 64 * 4096
    for r in rams[1:]:
        r.release()
    r = rams[0]
    # One page touched in each of many chunks: the chunks (4 KiB each) fill the limit
    # long before the pages do; the batch that does not fit is refused whole.
    touched = 0
    with pytest.raises(OSError) as no_room:
        for c in range(PAGES_64G // CHUNK):
            r.touched([(c * CHUNK, 1)])
            touched += 1
    assert no_room.value.errno == errno.ENOMEM
    assert r.resident_pages() == touched and b.ledger_bytes <= 64 * 4096


def test_the_device_refuses_a_guest_or_a_touch_the_memory_limit_cannot_hold() -> None:
    d = BalloonDevice(SimBackend(capacity_pages=40))
    s, _ = d.table.negotiate(Negotiation("a", 64 * GIB, 4096, F.mask(F.REPORTING), 0))
    runs = [(c * CHUNK, 1) for c in range(64)]
    assert not d.handle_touched(s, [p for p, _ in runs], [n for _, n in runs])
    assert d.metrics.refusals["touched_no_memory"] == 1 and s.ram.resident_pages() == 0
    with pytest.raises(LimitReached):
        for i in range(100):
            d.table.negotiate(Negotiation(f"g{i}", 64 * GIB, 4096, F.mask(F.REPORTING), 0))
    assert d.metrics.turned_away["no_room"] == 1


class FlatRam:
    """The ledger as it was: one bytearray, a byte per frame (the reference)."""

    def __init__(self, n: int, mode: str) -> None:
        self.fr = bytearray(n)
        self.mode = mode

    def discard(self, pfn: int, n: int) -> None:
        seg = self.fr[pfn : pfn + n]
        if self.mode == "free":
            self.fr[pfn : pfn + n] = seg.replace(bytes([RESIDENT]), bytes([LAZY]))
        else:
            self.fr[pfn : pfn + n] = bytes(n)

    def touched(self, pfn: int, n: int) -> None:
        self.fr[pfn : pfn + n] = bytes([RESIDENT]) * n

    def reclaim(self, pfn: int, n: int) -> None:
        seg = self.fr[pfn : pfn + n]
        self.fr[pfn : pfn + n] = seg.replace(bytes([LAZY]), bytes([ABSENT]))


@pytest.mark.parametrize("mode", ["dontneed", "free"])
def test_the_sparse_ledger_agrees_with_a_flat_one(mode: str) -> None:
    rng = random.Random(5)
    n = 3 * CHUNK + 1024  # the last chunk is short
    b = SimBackend(mode)
    r = b.attach("g", n, 4096)
    assert isinstance(r, SimRam)
    flat = FlatRam(n, mode)
    for _ in range(3000):
        op = rng.random()
        if op < 0.4:
            order = rng.randrange(0, 11)
            pfn = rng.randrange(0, n >> order) << order
            r.discard([(pfn, 1 << order)])
            flat.discard(pfn, 1 << order)
        elif op < 0.9:
            pfn = rng.randrange(0, n)
            k = rng.randrange(1, min(3000, n - pfn) + 1)
            r.touched([(pfn, k)])
            flat.touched(pfn, k)
        else:
            pfn = rng.randrange(0, n - 64)
            r.reclaim_range(pfn, 64)
            flat.reclaim(pfn, 64)
        held = n - flat.fr.count(ABSENT)
        assert r.resident_pages() == held == b.resident
        assert r.lazily_free_pages() == flat.fr.count(LAZY)
    assert r.frames(0, n) == bytes(flat.fr)
