from __future__ import annotations

import pytest

from host.memory.sim import SimBackend


def test_dontneed_releases_at_once_and_touch_faults_back() -> None:
    b = SimBackend("dontneed")
    r = b.attach("g", 1024, 4096)
    assert r.resident_pages() == 0  # a fresh guest's RAM is untouched
    r.touched([(0, 512)])
    assert r.resident_pages() == 512 == b.resident
    assert r.discard([(0, 256)]) == 256
    assert r.resident_pages() == 256
    r.touched([(0, 1)])
    assert r.resident_pages() == 257


def test_madv_free_stays_resident_until_pressure() -> None:
    b = SimBackend("free", capacity_pages=600)
    r = b.attach("g", 1024, 4096)
    r.touched([(0, 512)])
    r.discard([(0, 512)])
    assert r.resident_pages() == 512 and r.lazily_free_pages() == 512
    # reuse before reclaim costs nothing: the frame is simply resident again
    r.touched([(0, 10)])
    assert r.lazily_free_pages() == 502 and r.resident_pages() == 512
    # other guest pushes the host over capacity: lazy frames are reclaimed first
    o = b.attach("o", 1024, 4096)
    o.touched([(0, 300)])
    assert b.resident <= 600
    assert b.reclaimed >= 212
    assert r.resident_pages() == 512 - b.reclaimed


def test_release_returns_everything() -> None:
    b = SimBackend()
    r = b.attach("g", 1024, 4096)
    r.touched([(0, 1024)])
    r.release()
    assert b.resident == 0


def test_lazily_freed_ranges_are_kept_only_where_reclaim_can_happen() -> None:
    from host.memory.sim import SimBackend

    unlimited = SimBackend(discard_mode="free")
    ram = unlimited.attach("g", 4096, 4096)
    ram.touched([(0, 4096)])
    for p in range(0, 4096, 8):
        ram.discard([(p, 8)])
    assert len(unlimited.lazy_ranges) == 0, "no memory limit: nothing ever reclaims them"
    limited = SimBackend(discard_mode="free", capacity_pages=1 << 20)
    ram2 = limited.attach("g", 4096, 4096)
    ram2.touched([(0, 4096)])
    for p in range(0, 4096, 8):
        ram2.discard([(p, 8)])
    assert len(limited.lazy_ranges) == 512
    ram2.release()
    assert len(limited.lazy_ranges) == 0, "an ended session's ranges are dropped"


def test_a_list_of_live_lazy_ranges_is_not_rebuilt_for_every_new_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Past the compaction floor, with every range still holding lazy frames, each
    # later range rebuilt the whole list (quadratic: a guest sending many small
    # chains could stall the host). Now the next rebuild waits for twice the size.
    import host.memory.sim as sim

    monkeypatch.setattr(sim, "LAZY_RANGES_COMPACT_AT", 64)
    b = sim.SimBackend(discard_mode="free", capacity_pages=1 << 30)
    rebuilds = 0
    has_lazy = sim.SimRam.has_lazy

    def counted(self: sim.SimRam, pfn: int, n: int) -> bool:
        nonlocal rebuilds
        rebuilds += 1
        return has_lazy(self, pfn, n)

    monkeypatch.setattr(sim.SimRam, "has_lazy", counted)
    ram = b.attach("g", 8192, 4096)
    ram.touched([(0, 8192)])
    for p in range(0, 8192, 8):  # 1024 ranges, all still lazily free
        ram.discard([(p, 8)])
    assert len(b.lazy_ranges) == 1024
    assert rebuilds < 4 * 1024, rebuilds  # was ~60,000 (every range past 64)
