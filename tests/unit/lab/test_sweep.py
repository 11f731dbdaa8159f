"""The sweep's figures: area saved, time to 90%, the Pareto front, the grid."""

from __future__ import annotations

import pytest

from lab.sweep import (
    Run,
    aggregate,
    combinations,
    format_sweep,
    not_applied,
    pareto_front,
    resident_area,
    time_to_90,
)
from pagehint.cli.sweep import parse_grid
from pagehint.errors import UsageError
from tests.records import guest_summary

GIB = 1 << 30


def rows(*pts: tuple[float, float], marks: dict[float, str] | None = None) -> list[dict]:  # type: ignore[type-arg]
    out = [{"t": t, "host_resident_bytes": int(v * GIB)} for t, v in pts]
    for t, label in (marks or {}).items():
        out.append({"t": t, "mark": label, "host_resident_bytes": None})
    return sorted(out, key=lambda r: r["t"])


def test_resident_area_is_steps_to_the_end() -> None:
    assert resident_area(rows((0, 1), (2, 0.5)), end=4) == pytest.approx(3 * GIB)


def test_time_to_90_after_each_free_mark() -> None:
    r = rows((0, 1), (1, 1), (1.5, 0.5), (2, 0.05), (3, 0.0), marks={1.0: "free-0", 2.5: "alloc-1"})
    # from 1 GiB down to 0.05 (lowest before the next mark): 90% of the drop is 0.145
    assert time_to_90(r) == pytest.approx(1.0)
    assert time_to_90(rows((0, 1), marks={0.5: "alloc"})) is None


def test_saved_area_against_the_baseline_and_the_front() -> None:
    base = Run({"policy": "none"}, 0, guest_summary(), rows((0, 1)))
    good = Run({"policy": "reporting"}, 0, guest_summary(chains=10), rows((0, 1), (1, 0)))
    cheap = Run({"policy": "bitmap"}, 0, guest_summary(chains=2), rows((0, 1), (3, 0)))
    worse = Run({"policy": "x:Y"}, 0, guest_summary(chains=20), rows((0, 1), (2, 0)))
    out = aggregate([good, cheap, worse], {((), 0): base}, duration=4)
    saved = {r["combination"]: r["saved_gib_s"] for r in out}
    assert saved == {"policy=reporting": 3.0, "policy=bitmap": 1.0, "policy=x:Y": 2.0}
    assert pareto_front(out) == ["policy=reporting", "policy=bitmap"]


def test_grid_parsing() -> None:
    grid = parse_grid(["reporting-order=0,9", "delay=0.5,2"])
    assert grid == {"policy": ("reporting",), "reporting-order": ("0", "9"), "delay": ("0.5", "2")}
    assert len(combinations(grid)) == 4
    for bad, message in [
        (["speedy=1"], "KNOB=V1,V2"),
        (["delay"], "KNOB=V1,V2"),
        (["delay="], "no values"),
        (["delay=1", "delay=2"], "given twice"),
        (["policy=spiral"], "unknown value 'spiral'"),
        (["policy=none"], "none is the baseline"),
        (["delay=1,1"], "a value given twice"),
        (["rate=1,,2"], "an empty value"),
    ]:
        with pytest.raises(UsageError, match=message):
            parse_grid(bad)


def test_each_workload_setting_has_its_own_baseline() -> None:
    base_fast = Run(
        {"policy": "none", "speed": "max"}, 0, guest_summary(), rows((0, 2)), baseline=True
    )
    base_slow = Run(
        {"policy": "none", "speed": "1"}, 0, guest_summary(), rows((0, 1)), baseline=True
    )
    fast = Run({"policy": "reporting", "speed": "max"}, 0, guest_summary(chains=1), rows((0, 0)))
    slow = Run({"policy": "reporting", "speed": "1"}, 0, guest_summary(chains=1), rows((0, 0)))
    baseline = {(r.load, r.seed): r for r in (base_fast, base_slow)}
    out = {r["combination"]: r["saved_gib_s"] for r in aggregate([fast, slow], baseline, 1)}
    assert out == {"policy=reporting speed=max": 2.0, "policy=reporting speed=1": 1.0}


def test_a_failed_run_is_a_row_not_a_crash() -> None:
    ok = Run({"policy": "reporting"}, 0, guest_summary(chains=3), rows((0, 0)))
    bad = Run({"policy": "reporting"}, 1, error="guest run002 failed: boom")
    (row,) = aggregate([ok, bad], {}, 1)
    assert row["runs"] == 1 and row["failed_runs"] == 1 and row["chains"] == 3


def test_a_knob_one_policy_ignores_is_not_run_for_it() -> None:
    # delay is the reporting policy's; threshold the bitmap's. A bitmap run per
    # delay value repeats one already made (4 of 16 runs, issue 21): run it once.
    grid = parse_grid(
        ["policy=reporting,bitmap", "reporting-order=7,9", "delay=0.5,2", "threshold=4,16"]
    )
    combos = combinations(grid)
    assert len(combos) == 4 + 4  # reporting: order × delay; bitmap: order × threshold
    assert {"policy": "bitmap", "reporting-order": "7", "threshold": "4"} in combos
    assert {"policy": "reporting", "reporting-order": "9", "delay": "2"} in combos
    assert not any("delay" in c for c in combos if c["policy"] == "bitmap")
    assert not any("threshold" in c for c in combos if c["policy"] == "reporting")
    assert len({tuple(c.items()) for c in combos}) == len(combos)
    assert not_applied(grid) == [
        "delay: reporting only, not varied for bitmap",
        "threshold: bitmap only, not varied for reporting",
    ]
    # A policy of your own may read any knob: it gets every one.
    own = combinations(parse_grid(["policy=examples/policies/idle.py:IdlePolicy", "delay=1,2"]))
    assert [c["delay"] for c in own] == ["1", "2"]
    assert not_applied(parse_grid(["delay=1,2"])) == []


def test_the_sweep_says_which_knobs_it_did_not_vary() -> None:
    report = {
        "results": [],
        "pareto": [],
        "runs_failed": [],
        "interrupted": False,
        "not_applied": ["delay: reporting only, not varied for bitmap"],
    }
    assert "delay: reporting only, not varied for bitmap" in format_sweep(report)  # type: ignore[arg-type]


def test_data_loss_is_marked_measured_only_with_real_memory() -> None:
    sim = Run({"policy": "reporting"}, 0, guest_summary(data_loss_checked=False), rows((0, 0)))
    shm = Run({"policy": "bitmap"}, 0, guest_summary(data_loss_checked=True), rows((0, 0)))
    out = {r["combination"]: r for r in aggregate([sim, shm], {}, 1)}
    assert out["policy=reporting"]["data_loss_checked"] is False
    assert out["policy=bitmap"]["data_loss_checked"] is True
