"""`pagehint density` with real processes, at small scale (sim backend).

A 1 GiB host with 256 MiB of swap (its VMM overhead per guest is the host's
default); guests of 320 MiB touching 256 MiB with a 16 MiB boot footprint.
Without hinting each guest stays resident (~280 MiB + the VMM's), so the third
pushes the host into swap; with reporting each gives its touch back and many
more fit.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from lab.plot import plots_available
from tests.integration.procs import run_cli

SMALL = [
    "--host-memory", "1GiB", "--swap", "256MiB", "--guest-ram", "320MiB", "--touch", "256MiB",
    "--boot-footprint", "16MiB", "--settle", "2",
]  # fmt: skip


def _no_guest_left(out: Path) -> None:
    """No process of this run is still alive (each child's command line names its folder)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        assert str(out) not in cmd or "pytest" in cmd, f"left running: {cmd}"


def test_density_counts_guests_before_swap_per_policy(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["density", *SMALL, "--guests-max", "6", "--policies", "none,reporting"]
    r = run_cli([*args, "--json", "--out", str(out)], timeout=400)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1  # one JSON document
    doc = json.loads(r.stdout)
    none, reporting = doc["policies"]
    assert none["policy"] == "none" and reporting["policy"] == "reporting"
    # none: two fit, the third pushed the host into swap and ended the run.
    assert none["guests_launched"] == 3
    assert none["first_swap_guest"] == 3
    assert none["guests_fit"] == 2
    assert none["stop_reason"] == "swap"
    assert none["swap_used_end_bytes"] > 0
    assert none["oom_kills"] == 0
    # reporting gives each touch back: more guests fit than without hinting.
    assert reporting["guests_fit"] > none["guests_fit"]
    for p in (none, reporting):
        assert [g["ending"] for g in p["guests"]][: p["guests_fit"]] == ["settled"] * p[
            "guests_fit"
        ]
        assert all(isinstance(g["touch_s"], float) for g in p["guests"])
        assert p["errors"] == []
        assert "host_timeline" not in p  # stdout leaves the timelines to summary.json
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policies"][0]["host_timeline"]
    rows = list(csv.DictReader((out / "density.csv").open()))
    assert len(rows) == none["guests_launched"] + reporting["guests_launched"]
    assert (out / "density.png").exists() == plots_available()
    _no_guest_left(out)


@pytest.mark.slow
def test_memhog_mode_times_each_job_and_runs_them_all(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["density", "--mode", "memhog", *SMALL, "--policies", "none"]
    r = run_cli([*args, "--json", "--out", str(out)], timeout=300)
    assert r.returncode == 0, r.stderr
    (none,) = json.loads(r.stdout)["policies"]
    assert none["guests_launched"] == 3
    assert none["stop_reason"] == "jobs_done"
    assert none["swap_used_end_bytes"] > 0
    assert all(g["touch_s"] is not None for g in none["guests"])
    _no_guest_left(out)


def test_without_swap_the_first_oom_kill_stops_the_run(tmp_path: Path) -> None:
    # No swap: the third guest does not fit, and the host's OOM killer ends one
    # (the largest oom_badness, maybe an earlier guest); the run stops there.
    out = tmp_path / "run"
    small = [*SMALL]
    small[small.index("--swap") + 1] = "0"
    r = run_cli(["density", *small, "--policies", "none", "--json", "--out", str(out)], 200)
    assert r.returncode == 0, r.stderr
    (none,) = json.loads(r.stdout)["policies"]
    assert none["stop_reason"] == "oom"
    assert none["oom_kills"] == 1
    assert none["guests_launched"] == 3 and none["guests_fit"] == 2
    assert sum(g["oom_killed"] for g in none["guests"]) == 1
    _no_guest_left(out)
