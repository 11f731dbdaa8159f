"""``pagehint sweep``: one workload across a grid of policies and knobs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from guest.hinting.plugin import parse_policies
from guest.workloads.scenario import load_scenario, resolve_scenario
from lab.plot import files_line
from lab.sweep import (
    KNOBS,
    SweepConfig,
    as_json,
    baselines,
    combinations,
    combo_label,
    format_sweep,
    run_sweep,
)
from pagehint.cli.guest import check_trace_speed
from pagehint.cli.options import out_help, run_folder, scenario_help, workload_help
from pagehint.cli.support import (
    Subparsers,
    add_flag,
    choice,
    convert,
    int_in,
    parse_ram,
    positive_float,
)
from pagehint.config import BACKENDS, WORKLOADS, GuestConfig
from pagehint.errors import UsageError
from pagehint.logging import log_as, setup
from pagehint.units import parse_seconds

MAX_RUNS = 1000


def add_parser(sub: Subparsers, env: Mapping[str, str]) -> None:
    p = sub.add_parser(
        "sweep",
        help="run one workload across a grid of policies and knobs",
        description="Runs a workload, scenario or trace once per combination of the --set "
        "values (times --repeat seeds), a few guests at a time against one host, with a "
        "`none` guest per seed as the baseline; prints a table and writes sweep.json, "
        "sweep.csv, resident.png and tradeoff.png.",
    )
    e = env
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KNOB=V1,V2",
        help="a knob and its values: policy (bitmap, reporting, or your own: FILE.py:CLASS | "
        "MODULE:CLASS), reporting-order, delay (reporting only), capacity, threshold (bitmap "
        "only), rate, speed (repeat --set for a grid; default: policy=reporting)",
    )
    add_flag(p, e, "--workload", default=None, help=workload_help())
    add_flag(p, e, "--scenario", default=None, help=scenario_help() + " (default: memhog)")
    add_flag(p, e, "--trace", default=None, help="a kernel page allocator trace to replay")
    add_flag(
        p, e, "--ram", default=None, help="guest RAM (default 1GiB; with --trace, what covers it)"
    )
    add_flag(p, e, "--trace-map", default=None, help="with --trace: identity | compact")
    add_flag(p, e, "--duration", default="15", help="seconds per run (with --trace an upper bound)")
    add_flag(p, e, "--repeat", default="1", help="runs per combination, seeds 0..N-1")
    add_flag(p, e, "--parallel", default="2", help="guests at a time")
    add_flag(p, e, "--backend", default="sim", help="sim | shm: the host started")
    add_flag(p, e, "--out", default=None, help=out_help("sweep-"))
    p.add_argument("--json", action="store_true", help="print sweep.json instead of the table")
    p.set_defaults(handler=run)


def parse_grid(sets: list[str]) -> dict[str, tuple[str, ...]]:
    grid: dict[str, tuple[str, ...]] = {}
    for item in sets:
        knob, eq, values = item.partition("=")
        knob = knob.strip()
        if not eq or knob not in KNOBS:
            raise UsageError(f"--set {item}: give KNOB=V1,V2 with KNOB one of {', '.join(KNOBS)}")
        if knob in grid:
            raise UsageError(f"--set {knob}: given twice")
        vals = tuple(v.strip() for v in values.split(","))
        if not any(vals):
            raise UsageError(f"--set {item}: no values")
        if not all(vals):
            raise UsageError(f"--set {item}: an empty value (between commas)")
        if len(set(vals)) != len(vals):
            raise UsageError(f"--set {item}: a value given twice")
        grid[knob] = vals
    if "none" in grid.get("policy", ()):
        raise UsageError("--set policy: none is the baseline, and runs anyway; leave it out")
    if "policy" in grid:
        parse_policies(",".join(grid["policy"]), "--set policy")
    else:
        grid = {"policy": ("reporting",), **grid}
    return grid


@dataclass(frozen=True)
class Knob:
    """A knob a sweep may vary: the guest flag that sets it, how its text is read
    (as the guest's own flag reads it), and the config field it sets."""

    flag: str
    read: Callable[[str], Any]
    field: tuple[str, ...]  # ("delay",) on GuestConfig; ("hinting", "delay") inside it


def _speed(text: str) -> float | None:
    return None if text == "max" else float(text)


KNOB_FIELDS = {
    "policy": Knob("--policy", str, ("hinting", "policy")),  # checked by parse_grid
    "reporting-order": Knob("--reporting-order", int, ("hinting", "order")),
    "delay": Knob("--delay", parse_seconds, ("hinting", "delay")),
    "capacity": Knob("--capacity", int, ("hinting", "capacity")),
    "threshold": Knob("--threshold", int, ("hinting", "threshold")),
    "rate": Knob("--rate", float, ("rate",)),
    "speed": Knob("--speed", _speed, ("trace", "speed")),
}
assert tuple(KNOB_FIELDS) == KNOBS  # the lab's names, each given its field here


def with_knob(cfg: GuestConfig, knob: str, text: str) -> GuestConfig:
    """``cfg`` with one knob set (dataclasses.replace: the config checks itself)."""
    k = KNOB_FIELDS[knob]
    value: Any = convert(text, k.read, k.flag)
    if len(k.field) == 1:
        return dataclasses.replace(cfg, **{k.field[0]: value})
    outer, name = k.field
    inner: Any = getattr(cfg, outer)
    if inner is None:  # --speed without --trace
        raise UsageError(f"{k.flag} is for --{outer}: give --{outer} FILE too")
    changed = dataclasses.replace(cfg, **{outer: dataclasses.replace(inner, **{name: value})})
    if changed.trace is not None and knob == "speed":
        check_trace_speed(changed.trace)
    return changed


def _knob_value(cfg: GuestConfig, knob: str) -> object:
    value: object = cfg
    for name in KNOB_FIELDS[knob].field:
        value = getattr(value, name)
    return value


def check_grid(base: GuestConfig, grid: dict[str, tuple[str, ...]]) -> None:
    """Every value of every knob, checked by the config on its own (a knob one of
    the grid's policies does not read is still checked), and no two values of a
    knob the same once read (8 and 08, 1 and 1s)."""
    for knob, texts in grid.items():
        seen: dict[object, str] = {}
        for text in texts:
            value = _knob_value(with_knob(base, knob, text), knob)
            if value in seen:
                raise UsageError(f"{knob}={seen[value]},{text}: the same value twice")
            seen[value] = text


def guest_args(
    grid: dict[str, tuple[str, ...]], base_args: list[str]
) -> dict[str, tuple[str, ...]]:
    """Each run's guest flags, by combination: the common flags parsed once by the
    guest's own parser into a GuestConfig, every value checked by setting it on
    that config with dataclasses.replace, and each combination's knobs given as
    the user wrote them (what was checked is what the guest reads)."""
    from pagehint.cli import guest as guest_command
    from pagehint.cli.support import RaisingParser

    # The guest's own flags and checks, without the whole CLI above the lab.
    parser = RaisingParser(prog="pagehint")
    guest_command.add_parser(parser.add_subparsers(parser_class=RaisingParser), {})
    # (--speed max for the common flags when the grid sets the speed: each value
    # is checked against the trace's clock on its own, by with_knob.)
    speed = ["--speed", "max"] if "speed" in grid and "--trace" in base_args else []
    base = guest_command.config_from_args(parser.parse_args(["guest", *base_args, *speed]))
    try:
        check_grid(base, grid)
    except UsageError as e:
        raise UsageError(f"--set: {e}") from None
    out: dict[str, tuple[str, ...]] = {}
    combos = combinations(grid)
    for combo in baselines(combos) + combos:
        flags = [x for knob, text in combo.items() for x in (KNOB_FIELDS[knob].flag, text)]
        out[combo_label(combo)] = (*base_args, *flags)
    return out


def run(a: argparse.Namespace, env: Mapping[str, str]) -> int:
    cfg = config_from_args(a)
    setup(quiet=bool(a.json))
    log_as("sweep")

    def progress(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    report = run_sweep(cfg, progress)
    if a.json:
        sys.stdout.write(json.dumps(as_json(report)) + "\n")
    else:
        sys.stdout.write(format_sweep(report) + "\n\n" + files_line(report["files"]) + "\n")
    if report["interrupted"]:
        return 130
    lost = any(r["data_loss_pages"] for r in report["results"])
    return 1 if lost or report["runs_failed"] else 0


def config_from_args(a: argparse.Namespace) -> SweepConfig:
    """The flags checked (every combination by the guest's own parser) into a SweepConfig."""
    grid = parse_grid(list(a.set))
    workload_args = _workload_args(a)
    ram = None if a.ram is None else str(a.ram)
    if ram is None and a.trace is None:
        ram = "1GiB"
    if ram is not None:
        parse_ram(ram)
    repeat = convert(a.repeat, int_in(1, 100), "--repeat")
    # Counted before anything is checked run by run: a huge grid fails at once.
    combos = 1
    for values in grid.values():
        combos *= len(values)
    if repeat * combos > MAX_RUNS:
        raise UsageError(f"the grid makes {repeat * combos} runs: at most {MAX_RUNS}")
    duration = convert(a.duration, lambda s: positive_float(str(parse_seconds(s))), "--duration")
    base = [*(["--ram", ram] if ram else []), "--duration", f"{duration:g}", *workload_args]
    return SweepConfig(
        grid=grid,
        guest_args=guest_args(grid, base),
        ram=ram,
        workload=tuple(workload_args),
        duration=duration,
        repeat=repeat,
        parallel=convert(a.parallel, int_in(1, 64), "--parallel"),
        backend=choice(str(a.backend), BACKENDS, "--backend"),
        out=run_folder(a.out, "sweep-"),  # made last, once every flag is checked
    )


def _workload_args(a: argparse.Namespace) -> list[str]:
    """The guest flags for what every run runs: a workload, a scenario or a trace."""
    given = [x for x in (a.workload, a.scenario, a.trace) if x is not None]
    if len(given) > 1:
        raise UsageError("give one of --workload, --scenario and --trace")
    if a.trace is not None:
        args = ["--trace", str(a.trace)]
        return args + (["--trace-map", str(a.trace_map)] if a.trace_map is not None else [])
    if a.trace_map is not None:
        raise UsageError("--trace-map is for --trace: give --trace FILE too")
    if a.workload is not None:
        return ["--workload", choice(str(a.workload), WORKLOADS, "--workload")]
    scenario = resolve_scenario(str(a.scenario or "memhog"))
    load_scenario(scenario)
    return ["--scenario", scenario]
