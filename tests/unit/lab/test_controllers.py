"""`pagehint controllers`' pieces without processes: the runs it understands, the
fleet it derives, the job it gives each half, and the figures it takes from
samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest.workloads.scenario import Alloc, Free, Mark, Sleep, parse_scenario
from lab.controllers import (
    DEFAULT_RUNS,
    ControllersConfig,
    Run,
    RunResult,
    Sample,
    parse_runs,
    scenario_text,
)
from lab.controllers_report import gib_minutes, reclaim_seconds
from pagehint.config import BootConfig
from pagehint.errors import UsageError

GiB = 1 << 30
MiB = 1 << 20


def test_runs_are_a_policy_a_controller_or_both() -> None:
    assert parse_runs("none,reporting,mom,reporting+pressure") == (
        Run("none", None),
        Run("reporting", None),
        Run("none", "mom"),
        Run("reporting", "pressure"),
    )
    assert [r.name for r in parse_runs(",".join(DEFAULT_RUNS))] == list(DEFAULT_RUNS)
    assert len(DEFAULT_RUNS) == 8


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("", "at least one"),
        ("bitmap", "not a run"),
        ("reporting+nope", "not a run"),
        ("mom,mom", "twice"),
        ("none+mom,mom", "twice"),
    ],
)
def test_a_bad_run_is_one_line(text: str, said: str) -> None:
    with pytest.raises(UsageError, match=said):
        parse_runs(text)


def _cfg(ram: int = 2 * GiB, boot: int = 233 * MiB) -> ControllersConfig:
    return ControllersConfig(
        runs=(Run("reporting", None),),
        guests=4,
        guest_ram_bytes=ram,
        overcommit=1.5,
        phase_s=40,
        boot=BootConfig(size_bytes=boot, holes=0.7),
        out=Path(),
    )


def test_the_fleet_overcommits_the_host_and_takes_its_shares_from_the_cover_letter() -> None:
    c = _cfg()
    assert c.host_memory_bytes == int(8 * GiB / 1.5) & ~4095
    assert c.swap_bytes == int(c.host_memory_bytes * 4 / 15) & ~4095  # 15 GB host, 4 GB swap
    assert c.work_bytes == int(2 * GiB * 0.8) & ~4095  # 4 GB of a 5 GB guest
    assert c.balloon_min_bytes == 233 * MiB
    c.check()
    with pytest.raises(UsageError, match="do not fit"):
        _cfg(ram=512 * MiB).check()


def test_each_half_is_busy_in_its_phases_and_frees_before_the_next_allocates() -> None:
    a = parse_scenario(scenario_text((1, 3), 64 * MiB, 10), "a").steps
    kinds = [type(s).__name__ for s in a]
    assert kinds.count("Alloc") == 2 and kinds.count("Free") == 2
    marks = [s.label for s in a if isinstance(s, Mark)]
    assert marks == ["busy1", "free1", "quiet2", "busy3", "free3", "quiet4", "end"]
    sleeps = [s.seconds for s in a if isinstance(s, Sleep)]
    assert sum(sleeps) == 40  # four phases of 10 s
    assert sleeps[0] == 5  # held for half the phase
    b = parse_scenario(scenario_text((2,), 64 * MiB, 10), "b").steps
    assert [s.label for s in b if isinstance(s, Mark)][:3] == ["quiet1", "busy2", "free2"]
    assert any(isinstance(s, Alloc) and s.size == 64 * MiB for s in b)
    assert any(isinstance(s, Free) for s in b)


def _sample(t: float, a: int, other: int = 0, killed: bool = False) -> Sample:
    guests = {"g02": other} if killed else {"g01": a, "g02": other}
    return Sample(t, a + other, 0, 0, guests)


def test_host_memory_times_time_is_the_area_under_the_samples() -> None:
    s = [Sample(0, GiB, 0, 0, {}), Sample(60, GiB, 0, 0, {}), Sample(120, 3 * GiB, 0, 0, {})]
    assert gib_minutes(s) == pytest.approx(1 + 2)


def test_reclaim_counts_from_the_first_free_until_the_set_amount_is_gone() -> None:
    r = RunResult(Run("reporting", None))
    r.marks = {"g01": {"free1": 10.0, "busy3": 50.0}, "g02": {}}
    r.samples = [_sample(5, GiB), _sample(10, GiB), _sample(12, 900 * MiB), _sample(14, 400 * MiB)]
    assert reclaim_seconds(r, 512 * MiB) == 4.0
    r.samples = [_sample(10, GiB), _sample(12, 900 * MiB), _sample(51, 900 * MiB)]
    assert reclaim_seconds(r, 512 * MiB) == "late"
    r.samples = [_sample(10, GiB), _sample(12, 0, killed=True)]
    assert reclaim_seconds(r, 512 * MiB) == "killed"
    r.marks = {}
    assert reclaim_seconds(r, 512 * MiB) == "n/a"
