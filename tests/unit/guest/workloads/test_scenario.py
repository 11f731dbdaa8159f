from __future__ import annotations

import asyncio
import time
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
from pagehint.config import BARE_MEMORY
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
            "step[1] (repeat).steps[1] (sleep): give seconds or until",
        ),
        ('[[steps]]\nop = "sleep"\nseconds = 1\nuntil = 2', "give seconds or until, one of"),
        ('[[steps]]\nop = "sleep"\nuntil = "soon"', "until must be a number"),
        ('[[steps]]\nop = "churn"', "step[1] (churn): give seconds or ops, one of them"),
        ('[[steps]]\nop = "churn"\nseconds = 1\nops = 5', "give seconds or ops, one of them"),
        ('[[steps]]\nop = "churn"\nops = 0', "ops must be an integer in 1..1000000000"),
        ('[[steps]]\nop = "churn"\nops = 2.5', "ops must be an integer"),
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
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    ctx = WorkloadContext(GuestMemory(mm))
    sc = parse_scenario(GOOD, "t.toml")
    await run_scenario(sc, ctx)
    # 8 MiB of pages, every other one freed; the repeat allocates and frees b
    assert len(ctx.groups["a"]) == 1024
    assert "b" not in ctx.groups
    assert mm.allocated_pages == 1024
    assert [label for _, label in ctx.stats.marks] == ["x"]
    check_invariants(mm)


SCHEDULE = """
[[steps]]
op = "sleep"
seconds = 0.5
[[steps]]
op = "mark"
label = "a"
[[steps]]
op = "sleep"
until = 1.5
[[steps]]
op = "mark"
label = "b"
[[steps]]
op = "sleep"
until = 1.2
[[steps]]
op = "mark"
label = "c"
"""


async def test_a_churn_by_count_does_that_many_operations_however_slow_they_are() -> None:
    # The differential test runs one history on two backends; by time, the one
    # whose touches cost more did fewer operations and held different memory.
    # Each operation here costs 1 ms against the churn's 0.1 ms budget (a rate of
    # 10,000/s): by seconds it would do about a tenth of them; by count, all.
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    ctx = WorkloadContext(GuestMemory(mm))
    alloc, free = ctx.memory.alloc, ctx.memory.free

    def slow_alloc(order: int) -> int:
        time.sleep(0.001)
        return alloc(order)

    def slow_free(pfn: int, order: int) -> None:
        time.sleep(0.001)
        free(pfn, order)

    ctx.memory.alloc, ctx.memory.free = slow_alloc, slow_free  # type: ignore[method-assign]
    sc = parse_scenario('[[steps]]\nop = "churn"\nops = 300\nrate = 10000', "c.toml")
    await run_scenario(sc, ctx)
    assert ctx.stats.alloc_ops + ctx.stats.free_ops == 300
    check_invariants(mm)


@pytest.mark.parametrize(
    ("text", "least", "most"),
    [
        # 3 operations at 20/s: two waits of 50 ms between them, none after.
        ('[[steps]]\nop = "churn"\nops = 3\nrate = 20', 0.09, 1.0),
        # 0.3 s at 2/s: the second operation's wait is cut to the churn's end.
        ('[[steps]]\nop = "churn"\nseconds = 0.3\nrate = 2', 0.25, 0.45),
        # 50 churns of one operation: no 10 ms wait after each (that was 0.5 s).
        (
            '[[steps]]\nop = "repeat"\ncount = 50\nsteps = [{op = "churn", ops = 1}]',
            0.0,
            0.4,
        ),
    ],
)
async def test_a_churn_keeps_its_rate_and_ends_with_its_last_operation(
    text: str, least: float, most: float
) -> None:
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    ctx = WorkloadContext(GuestMemory(mm))
    t0 = time.monotonic()
    await run_scenario(parse_scenario(text, "c.toml"), ctx)
    assert least <= time.monotonic() - t0 < most
    check_invariants(mm)


async def test_sleep_until_keeps_the_schedule_from_the_scenarios_start() -> None:
    # A recorded history's steps fall at its times after the start, however long
    # the steps before them took; a time already past is no wait at all. (Bounds
    # far apart, for a loaded machine: counted from the step before, "b" would come
    # at 2.0 s or later, and "c" 1.2 s after "b".)
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    ctx = WorkloadContext(GuestMemory(mm))
    await asyncio.sleep(0.3)  # the scenario begins later than the context
    began = ctx.now()
    await run_scenario(parse_scenario(SCHEDULE, "s.toml"), ctx)
    at = {label: t - began for t, label in ctx.stats.marks}
    assert 0.5 <= at["a"] < 1.4
    assert 1.5 <= at["b"] < 1.95
    assert at["c"] - at["b"] < 0.8


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


def _steps(*lines: str) -> str:
    return "".join(f"[[steps]]\n{line}\n" for line in lines)


ALLOC_A = 'op = "alloc"\nname = "a"\nsize = "8MiB"'
FREE_A = 'op = "free"\nname = "a"'


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            _steps(ALLOC_A, ALLOC_A),
            "step[2] (alloc): allocates 'a' again while step[1] (alloc) still holds it",
        ),
        (
            # Every other block freed: the rest is still held.
            _steps(ALLOC_A, FREE_A + "\nstride = 2", ALLOC_A),
            "step[3] (alloc): allocates 'a' again while step[1] (alloc) still holds it",
        ),
        (
            # The repeat's second turn allocates what its first still holds.
            'steps = [{op = "repeat", count = 2, steps = [{op = "alloc", name = "a", '
            'size = "1MiB"}]}]\n',
            "step[1] (repeat).steps[1] (alloc): allocates 'a' again while step[1] "
            "(repeat).steps[1] (alloc) still holds it",
        ),
        (
            _steps(ALLOC_A, 'op = "churn"\nseconds = 1\nname = "a"'),
            "step[2] (churn): churns in 'a', which step[1] (alloc) allocated and still holds",
        ),
        (
            _steps('op = "churn"\nseconds = 1', 'op = "alloc"\nname = "churn"\nsize = "1MiB"'),
            "step[2] (alloc): allocates 'churn' again while step[1] (churn) still holds it",
        ),
    ],
)
def test_an_alloc_into_a_group_still_held_is_refused(text: str, needle: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_scenario(text, "dup.toml")
    assert str(e.value).startswith("scenario dup.toml: ") and needle in str(e.value)


@pytest.mark.parametrize(
    "text",
    [
        _steps(ALLOC_A, FREE_A, ALLOC_A),
        _steps(ALLOC_A, FREE_A + "\nstride = 2", FREE_A, ALLOC_A),
        # Freed inside each turn (as the shipped race scenarios do), churn twice.
        'steps = [{op = "repeat", count = 1000, steps = [{op = "alloc", name = "a", '
        'size = "1MiB"}, {op = "free", name = "a", stride = 2}, {op = "free", name = "a"}, '
        '{op = "churn", seconds = 0.1}]}]\n',
        # Frees first: the turn starts with 'a' gone.
        _steps(
            ALLOC_A,
            'op = "repeat"\ncount = 3\nsteps = [{op = "free", name = "a"}, '
            '{op = "alloc", name = "a", size = "1MiB"}]',
        ),
    ],
)
def test_an_alloc_after_its_group_was_freed_is_fine(text: str) -> None:
    assert parse_scenario(text, "ok.toml").steps


def test_a_scenario_larger_than_ram_is_refused_naming_both_sizes(tmp_path: Path) -> None:
    f = tmp_path / "big.toml"
    f.write_text(_steps(ALLOC_A.replace("8MiB", "1GiB")))
    with pytest.raises(UsageError) as e:
        load_scenario(f, 256 << 20)
    assert str(e.value) == (
        f"scenario {f}: holds 1.0 GiB at step[1] (alloc), more than the guest's 256.0 MiB of "
        "RAM (--ram): give the guest more RAM or the scenario less memory"
    )
    assert load_scenario(f, 1 << 30).steps  # all of RAM: the allocator holds none back
    assert load_scenario(f).steps  # RAM not known: not checked


@pytest.mark.parametrize(
    ("text", "ram_mib", "where"),
    [
        # Two groups held at once, each below RAM.
        (_steps(ALLOC_A.replace("8MiB", "40MiB"), ALLOC_A.replace('"a"', '"b"')), 40, "step[2]"),
        # Churn holds occupancy x RAM besides what is allocated.
        (_steps(ALLOC_A.replace("8MiB", "40MiB"), 'op = "churn"\nseconds = 1'), 64, "step[2]"),
        # Rounded up to whole blocks: 3 order-10 blocks of 4 MiB.
        (_steps('op = "alloc"\nname = "a"\nsize = "65MiB"\norder = 10'), 64, "step[1]"),
        # A repeat's turn adds to what was held before it.
        (
            _steps(
                ALLOC_A.replace("8MiB", "60MiB").replace('"a"', '"b"'),
                'op = "repeat"\ncount = 5\nsteps = [{op = "alloc", name = "a", size = "8MiB"}, '
                '{op = "free", name = "a"}]',
            ),
            64,
            "steps[1] (alloc)",
        ),
    ],
)
def test_the_peak_counts_every_group_held_at_once(text: str, ram_mib: int, where: str) -> None:
    from guest.workloads.scenario import check_fits

    sc = parse_scenario(text, "t.toml")
    with pytest.raises(UsageError, match="more than the guest's") as e:
        check_fits(sc, ram_mib << 20)
    assert where in str(e.value)


def test_a_peak_after_frees_fits() -> None:
    from guest.workloads.scenario import check_fits

    text = _steps(
        ALLOC_A.replace("8MiB", "48MiB"),
        FREE_A + "\nstride = 2",  # 24 MiB left
        ALLOC_A.replace("8MiB", "40MiB").replace('"a"', '"b"'),  # 64 MiB at most
        FREE_A,
        'op = "churn"\nseconds = 1\noccupancy = 0.3',
    )
    check_fits(parse_scenario(text, "t.toml"), 128 << 20)


def test_shipped_scenarios_fit_the_ram_their_commands_default_to() -> None:
    root = Path(__file__).resolve().parents[4] / "guest" / "workloads" / "scenarios"
    load_scenario(root / "memhog.toml", 256 << 20)  # exactly all of it
    load_scenario(root / "phases.toml", 1 << 30)  # the demo's --ram
    with pytest.raises(UsageError, match=r"holds 384\.0 MiB at step"):
        load_scenario(root / "phases.toml", 256 << 20)


def test_following_a_million_turns_of_nested_repeats_is_quick() -> None:
    import time

    inner = '{op = "alloc", name = "a", size = "1MiB"}, {op = "free", name = "a", stride = 3}'
    for _ in range(15):
        inner = (
            f'{{op = "repeat", count = 1000000, steps = [{inner}, {{op = "free", name = "a"}}]}}'
        )
    t0 = time.monotonic()
    parse_scenario(f"steps = [{inner}]\n")
    assert time.monotonic() - t0 < 5


def test_too_much_to_follow_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from guest.workloads import scenario

    monkeypatch.setattr(scenario, "MAX_FOLLOWED", 50)
    # Each turn frees half of what is left of 'a': no turn repeats the one before.
    inner = '{op = "free", name = "a", stride = 2}'
    for _ in range(8):
        inner = f'{{op = "repeat", count = 9, steps = [{inner}]}}'
    text = (
        _steps(ALLOC_A.replace("8MiB", "1GiB"))
        + f'[[steps]]\nop = "repeat"\ncount = 2\nsteps = [{inner}]\n'
    )
    with pytest.raises(UsageError, match="more than 50 steps to follow"):
        parse_scenario(text, "t.toml")


def test_twenty_thousand_groups_held_at_once_are_counted_quickly() -> None:
    import time

    from guest.workloads.scenario import check_fits

    text = "".join(_steps(f'op = "alloc"\nname = "a{i}"\nsize = "4KiB"') for i in range(20_000))
    t0 = time.monotonic()
    check_fits(parse_scenario(text, "t.toml"), 128 << 20)
    # A running total, not a sum per step: that took 16 s on an idle machine, this
    # takes 1.3 s (5.5 s once under a loaded CI run), so 12 s still tells them apart.
    assert time.monotonic() - t0 < 12


async def test_until_inside_a_repeat_counts_from_each_turn() -> None:
    # From the scenario's start, every turn after the first would find its time
    # past and run flat out; from the turn's start it keeps a schedule per turn.
    text = (
        '[[steps]]\nop = "repeat"\ncount = 3\n'
        'steps = [ {op = "sleep", until = 0.15}, {op = "mark", label = "t"} ]\n'
    )
    ctx = WorkloadContext(GuestMemory(BuddyAllocator(64 << 20, model=BARE_MEMORY)))
    began = ctx.now()
    await run_scenario(parse_scenario(text, "r.toml"), ctx)
    at = [t - began for t, _ in ctx.stats.marks]
    assert len(at) == 3
    assert all(0.14 <= b - a < 0.3 for a, b in zip([0.0, *at], at, strict=False)), at
