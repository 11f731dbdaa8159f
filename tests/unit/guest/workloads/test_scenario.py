from __future__ import annotations

from pathlib import Path

import pytest

from guest.memory import GuestMemory
from guest.mm import BuddyAllocator
from guest.mm.check import check_invariants
from guest.workloads.base import WorkloadContext
from guest.workloads.scenario import (
    Alloc,
    Free,
    Repeat,
    load_scenario,
    parse_scenario,
    run_scenario,
)
from pagehint.errors import UsageError

GOOD = """
name = "t"
[[steps]]
op = "alloc"
name = "a"
size = "8MiB"
[[steps]]
op = "mark"
label = "x"
[[steps]]
op = "free"
name = "a"
stride = 2
[[steps]]
op = "repeat"
count = 2
steps = [ {op = "alloc", name = "b", size = "1MiB", order = 2}, {op = "free", name = "b"} ]
"""


def test_parse_good_scenario() -> None:
    sc = parse_scenario(GOOD, "t.toml")
    assert sc.steps[0] == Alloc("a", 8 << 20, 0)
    assert sc.steps[2] == Free("a", 2, 0)
    assert isinstance(sc.steps[3], Repeat) and sc.steps[3].count == 2


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("steps = 3", "step: expected a non-empty list"),
        ('[[steps]]\nop = "jump"', "step[1]: unknown op 'jump'"),
        ('[[steps]]\nop = "alloc"\nname = "a"', "step[1] (alloc): missing size"),
        ('[[steps]]\nop = "alloc"\nname = "a"\nsize = "3x"', "step[1] (alloc): bad size"),
        (
            '[[steps]]\nop = "alloc"\nname = "a"\nsize = "1MiB"\norder = 11',
            "order must be an integer",
        ),
        ('[[steps]]\nop = "free"\nname = "nope"', "frees 'nope', which no earlier step allocates"),
        ('[[steps]]\nop = "sleep"\nseconds = -1', "seconds must be a number"),
        ('[[steps]]\nop = "mark"\nlabel = "a"\ncolour = 1', "unknown field colour"),
        ("[[steps]\n", "not valid TOML"),
        ('bogus = 1\n[[steps]]\nop = "mark"\nlabel = "a"', "unknown top-level key bogus"),
        (
            '[[steps]]\nop = "repeat"\ncount = 2\nsteps = [ {op = "sleep"} ]',
            "step[1] (repeat).steps[1] (sleep): missing seconds",
        ),
    ],
)
def test_bad_scenarios_name_file_step_and_problem(text: str, needle: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_scenario(text, "bad.toml")
    assert str(e.value).startswith("scenario bad.toml: ")
    assert needle in str(e.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")


async def test_run_scenario_allocates_and_frees_with_stride() -> None:
    mm = BuddyAllocator(64 << 20)
    ctx = WorkloadContext(GuestMemory(mm))
    sc = parse_scenario(GOOD, "t.toml")
    await run_scenario(sc, ctx)
    # 8 MiB of pages, every other one freed; the repeat allocates and frees b
    assert len(ctx.groups["a"]) == 1024
    assert "b" not in ctx.groups
    assert mm.allocated_pages == 1024
    assert [label for _, label in ctx.stats.marks] == ["x"]
    check_invariants(mm)


def test_shipped_scenarios_parse() -> None:
    root = Path(__file__).resolve().parents[4] / "guest" / "workloads" / "scenarios"
    files = sorted(root.glob("*.toml"))
    assert files
    for f in files:
        assert load_scenario(f).steps


async def test_a_million_marks_respect_the_duration() -> None:
    import time

    from guest.runtime import GuestRuntime
    from pagehint.config import GuestConfig, HintingConfig

    marks = parse_scenario(
        '[[steps]]\nop = "repeat"\ncount = 1000000\n'
        'steps = [{op = "mark", label = "m"}, {op = "sleep", seconds = 0}]\n'
    )
    cfg = GuestConfig(ram_bytes=64 << 20, duration=0.5, hinting=HintingConfig(policy="none"))
    rt = GuestRuntime(cfg, scenario=marks)
    t0 = time.monotonic()
    s = await rt.run()
    assert time.monotonic() - t0 < 1.5, "every step must yield, so the duration can end the run"
    assert 0 < len(s["marks"]) < 1_000_000


def test_repeats_nested_too_deep_are_one_line() -> None:
    inner = '{op = "mark", label = "x"}'
    for _ in range(20):
        inner = f'{{op = "repeat", count = 1, steps = [{inner}]}}'
    with pytest.raises(UsageError, match="nested more than 16 deep"):
        parse_scenario(f"steps = [{inner}]\n")
