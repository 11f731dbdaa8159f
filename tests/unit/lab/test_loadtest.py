"""The loadtest's figures: overcommit counts only the guests that finished allocating."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from lab import loadtest
from lab.loadtest import LoadtestConfig
from pagehint.schema import GuestSummary
from tests.records import guest_summary

MIB = 1 << 20
RAM = 256 * MIB
PAGES = RAM // 4096


def _cfg(tmp_path: Path, guests: int) -> LoadtestConfig:
    return LoadtestConfig(
        guests=guests,
        ram_bytes=RAM,
        duration=10,
        capacity_bytes=guests * RAM // 2,
        backend="sim",
        policies=("reporting",),
        rate=1000,
        out=tmp_path,
    )


def _guest(name: str, **fields: Any) -> GuestSummary:
    return guest_summary(guest_id=name, ram_bytes=RAM, **fields)


def _observed(summaries: dict[str, GuestSummary], per_guest: list[dict[str, int]]) -> Any:
    # Set field by field: what the loadtest records while it runs.
    seen = loadtest._Observed()
    seen.summaries = summaries
    seen.host_rows = [
        {"t": float(i), "host_resident_bytes": sum(p.values()), "guests": len(p), "chains": 0}
        for i, p in enumerate(per_guest)
    ]
    seen.guest_resident = per_guest
    seen.elapsed = 10.0
    return seen


def test_overcommit_counts_only_guests_that_finished_allocating(tmp_path: Path) -> None:
    # Guests run memhog, churn, fragment, memhog (ROTATION in turn). lt-001 and
    # lt-003 finished allocating; lt-002 (churn, far below its target) and lt-004
    # (memhog, still allocating its hog when the run ended) did not.
    names = ["lt-001", "lt-002", "lt-003", "lt-004"]
    summaries = {
        "lt-001": _guest(
            "lt-001", marks=[{"t": 1.0, "label": "alloc-0"}, {"t": 2.0, "label": "free-0"}]
        ),
        "lt-002": _guest("lt-002", allocated_bytes=10 * MIB, alloc_ops=3000),
        "lt-003": _guest("lt-003", alloc_ops=PAGES // 2, allocated_bytes=RAM // 4),
        "lt-004": _guest("lt-004", marks=[{"t": 9.5, "label": "alloc-0"}], allocated_bytes=4 * MIB),
    }
    per_guest = [
        {"lt-001": 128 * MIB, "lt-002": 2 * MIB, "lt-003": 128 * MIB},
        {"lt-001": 64 * MIB, "lt-002": 10 * MIB, "lt-003": 64 * MIB, "lt-004": 4 * MIB},
    ]
    r = loadtest._report(_cfg(tmp_path, 4), names, _observed(summaries, per_guest))
    # The two finished guests' RAM (512 MiB) over the most the host held for those
    # two at once (256 MiB, the first sample): 2.0. Counting every guest's RAM over
    # the host's whole peak would say 1 GiB / 258 MiB = 3.97.
    assert r["overcommit_ratio"] == 2.0
    assert r["guests_finished_allocating"] == 2
    assert r["finished_resident_peak_bytes"] == 256 * MIB
    assert r["host_resident_peak_bytes"] == 258 * MIB  # the host's own peak, unchanged
    line = next(x for x in loadtest.format_loadtest(r).splitlines() if "overcommit achieved" in x)
    assert "2.0× (2/4 guests finished allocating" in line


def test_no_guest_finished_allocating_gives_no_figure(tmp_path: Path) -> None:
    summaries = {"lt-001": _guest("lt-001", allocated_bytes=MIB)}
    r = loadtest._report(_cfg(tmp_path, 1), ["lt-001"], _observed(summaries, [{"lt-001": MIB}]))
    assert r["overcommit_ratio"] is None and r["guests_finished_allocating"] == 0
    assert "n/a (0/1 guests finished allocating)" in loadtest.format_loadtest(r)


def test_what_finished_allocating_means_per_workload() -> None:
    done = loadtest.finished_allocating
    # memhog: reached its free mark, or the run ended while it held its hog.
    assert done("memhog", _guest("a", marks=[{"t": 1.0, "label": "free-0"}]))
    assert done("memhog", _guest("a", allocated_bytes=RAM // 2))
    assert not done("memhog", _guest("a", allocated_bytes=RAM // 2 - 4096))
    # fragment: made every page allocation of its half (it marks free-every-other
    # even when the run stopped its allocation, so the mark does not count).
    assert done("fragment", _guest("a", alloc_ops=PAGES // 2))
    assert not done(
        "fragment",
        _guest("a", alloc_ops=PAGES // 4, marks=[{"t": 1.0, "label": "free-every-other"}]),
    )
    # churn: within 5% of its target occupancy (half its RAM).
    assert done("churn", _guest("a", allocated_bytes=int(RAM * 0.5 * 0.96)))
    assert not done("churn", _guest("a", allocated_bytes=int(RAM * 0.5 * 0.9)))
    assert not done("unknown", _guest("a", allocated_bytes=RAM))


def test_the_first_line_names_the_transport_that_carried_the_streams(tmp_path: Path) -> None:
    summaries = {"lt-001": _guest("lt-001", allocated_bytes=MIB)}
    for socket, shown in ((False, "streams on gRPC"), (True, "streams on queue socket")):
        cfg = dataclasses.replace(_cfg(tmp_path, 1), queue_socket=socket)
        r = loadtest._report(cfg, ["lt-001"], _observed(summaries, [{"lt-001": MIB}]))
        assert r["transport"] == ("queue socket" if socket else "grpc")
        first = loadtest.format_loadtest(r).splitlines()[0]
        assert first.startswith("guests") and f"(sim backend, {shown})" in first, first
