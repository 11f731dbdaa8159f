"""The sweep's runs: configs built with dataclasses.replace, turned into flags once."""

from __future__ import annotations

import pytest

from pagehint.cli.sweep import KNOB_FIELDS, guest_args, parse_grid, with_knob
from pagehint.config import GuestConfig, HintingConfig
from pagehint.errors import UsageError

BASE = ["--ram", "256MiB", "--duration", "3", "--workload", "memhog"]


def test_each_combination_and_its_baseline_get_their_flags_from_their_config() -> None:
    grid = parse_grid(["delay=0.5,2s", "capacity=8", "rate=100"])
    args = guest_args(grid, BASE)
    assert args["policy=reporting delay=0.5 capacity=8 rate=100"] == (
        *BASE, "--policy", "reporting", "--delay", "0.5", "--capacity", "8", "--rate", "100",
    )  # fmt: skip
    # given as written (checked as the guest reads it: no float rewritten as 1e-05)
    assert args["policy=reporting delay=2s capacity=8 rate=100"][8:10] == ("--delay", "2s")
    # the baseline runs the same workload knobs
    assert args["policy=none rate=100"] == (*BASE, "--policy", "none", "--rate", "100")


@pytest.mark.parametrize(
    ("sets", "said"),
    [
        (["delay=-1"], "--set: --delay: bad duration"),
        (["capacity=0"], "--set: --capacity 0: "),
        (["capacity=x"], "--set: --capacity: bad value 'x'"),
        (["speed=2"], "--set: --speed is for --trace"),
        (["reporting-order=99"], "--set: --hinting-order 99"),
        # a knob the grid's only policy does not read is still checked
        (["policy=bitmap", "delay=abc"], "--set: --delay: bad duration"),
        (["policy=reporting", "threshold=-5"], "--set: --threshold -5"),
        # two spellings of one value would run the same combination twice
        (["capacity=8,08"], "--set: capacity=8,08: the same value twice"),
        (["delay=1,1000ms"], "--set: delay=1,1000ms: the same value twice"),
    ],
)
def test_a_bad_value_is_refused_by_the_config_in_one_line(sets: list[str], said: str) -> None:
    with pytest.raises(UsageError) as e:
        guest_args(parse_grid(sets), BASE)
    assert str(e.value).startswith(said) and "\n" not in str(e.value), str(e.value)


def test_every_knob_sets_a_real_config_field() -> None:
    cfg = GuestConfig(ram_bytes=1 << 28, hinting=HintingConfig(policy="reporting"))
    for knob, k in KNOB_FIELDS.items():
        if k.field[0] == "trace":
            continue  # needs a trace (refused above without one)
        text = {"policy": "bitmap"}.get(knob, "3")
        changed = with_knob(cfg, knob, text)
        assert changed != cfg, knob


def test_a_value_reaches_the_guest_as_written() -> None:
    args = guest_args(parse_grid(["rate=1234567", "delay=0.01ms"]), BASE)
    assert args["policy=reporting rate=1234567 delay=0.01ms"][-4:] == (
        "--rate", "1234567", "--delay", "0.01ms",
    )  # fmt: skip


def test_the_speed_of_a_trace_is_checked_value_by_value() -> None:
    trace = ["--duration", "1", "--trace", "examples/traces/python-grow-shrink.trace.gz"]
    args = guest_args(parse_grid(["speed=max,2"]), trace)
    assert args["policy=reporting speed=max"][-2:] == ("--speed", "max")
    assert args["policy=reporting speed=2"][-2:] == ("--speed", "2")
