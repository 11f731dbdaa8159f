"""Scenario files: a TOML list of steps run in order.

Steps (``op`` names the kind)::

    [[steps]]
    op = "alloc"      # name, size ("256MiB"), order (default 0)
    [[steps]]
    op = "free"       # name, stride (default 1), offset (default 0)
    [[steps]]
    op = "sleep"      # seconds
    [[steps]]
    op = "mark"       # label: shows on timelines and plots
    [[steps]]
    op = "churn"      # seconds, occupancy (default 0.5), rate (ops/s, default 20000),
                      # name (default "churn": the group a later free can name)
    [[steps]]
    op = "repeat"     # count, steps = [ {op = ...}, ... ]

A bad file is a UsageError naming the file, the step and what is wrong.
"""

from __future__ import annotations

import asyncio
import tomllib
from dataclasses import dataclass
from pathlib import Path

from guest.mm.constants import MAX_ORDER
from guest.workloads.base import WorkloadContext
from guest.workloads.builtin import churn_for
from pagehint.errors import UsageError
from pagehint.files import read_small_text
from pagehint.units import parse_size

MAX_NESTING = 16  # repeats inside repeats: deeper is a generated file gone wrong
MAX_FILE_BYTES = 1 << 20  # a scenario is a handful of steps; repeats make it long
MAX_STEPS = 100_000  # steps written out in the file (repeats not multiplied)


@dataclass(frozen=True)
class Alloc:
    name: str
    size: int
    order: int


@dataclass(frozen=True)
class Free:
    name: str
    stride: int
    offset: int


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Mark:
    label: str


@dataclass(frozen=True)
class Churn:
    seconds: float
    occupancy: float
    rate: float
    name: str = "churn"  # the group churn holds its blocks in (a later free can name it)


@dataclass(frozen=True)
class Repeat:
    count: int
    steps: tuple[Step, ...]


Step = Alloc | Free | Sleep | Mark | Churn | Repeat

_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    # op: (required, optional)
    "alloc": ({"name", "size"}, {"order"}),
    "free": ({"name"}, {"stride", "offset"}),
    "sleep": ({"seconds"}, set()),
    "mark": ({"label"}, set()),
    "churn": ({"seconds"}, {"occupancy", "rate", "name"}),
    "repeat": ({"count", "steps"}, set()),
}


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    steps: tuple[Step, ...]


class _Parser:
    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0

    def fail(self, where: str, msg: str) -> UsageError:
        return UsageError(f"scenario {self.path}: {where}: {msg}")

    def steps(self, raw: object, where: str, names: set[str], depth: int = 0) -> tuple[Step, ...]:
        self.count += len(raw) if isinstance(raw, list) else 0
        if self.count > MAX_STEPS:
            raise self.fail(where, f"more than {MAX_STEPS} steps (use repeat)")
        if depth > MAX_NESTING:
            raise self.fail(where, f"repeats nested more than {MAX_NESTING} deep")
        if not isinstance(raw, list) or not raw:
            raise self.fail(where, "expected a non-empty list of steps")
        return tuple(
            self.step(item, f"{where}[{i + 1}]", names, depth) for i, item in enumerate(raw)
        )

    def step(self, raw: object, where: str, names: set[str], depth: int = 0) -> Step:
        if not isinstance(raw, dict):
            raise self.fail(where, "a step must be a table with an 'op'")
        op = raw.get("op")
        if op not in _FIELDS:
            known = ", ".join(sorted(_FIELDS))
            raise self.fail(where, f"unknown op {op!r} (known: {known})")
        where = f"{where} ({op})"
        required, optional = _FIELDS[op]
        keys = set(raw) - {"op"}
        missing = required - keys
        if missing:
            raise self.fail(where, f"missing {', '.join(sorted(missing))}")
        extra = keys - required - optional
        if extra:
            raise self.fail(where, f"unknown field {', '.join(sorted(extra))}")
        if op == "alloc":
            name = self.string(raw["name"], where, "name")
            try:
                size = parse_size(raw["size"])
            except UsageError as e:
                raise self.fail(where, str(e)) from None
            if size <= 0:
                raise self.fail(where, "size must be positive")
            order = self.integer(raw.get("order", 0), where, "order", 0, MAX_ORDER)
            names.add(name)
            return Alloc(name, size, order)
        if op == "free":
            name = self.string(raw["name"], where, "name")
            if name not in names:
                raise self.fail(where, f"frees {name!r}, which no earlier step allocates")
            stride = self.integer(raw.get("stride", 1), where, "stride", 1, 1 << 30)
            offset = self.integer(raw.get("offset", 0), where, "offset", 0, 1 << 30)
            return Free(name, stride, offset)
        if op == "sleep":
            return Sleep(self.number(raw["seconds"], where, "seconds", 0.0, 86400.0))
        if op == "mark":
            return Mark(self.string(raw["label"], where, "label"))
        if op == "churn":
            group = self.string(raw.get("name", "churn"), where, "name")
            names.add(group)
            return Churn(
                self.number(raw["seconds"], where, "seconds", 0.0, 86400.0),
                self.number(raw.get("occupancy", 0.5), where, "occupancy", 0.0, 0.95),
                self.number(raw.get("rate", 20_000), where, "rate", 1.0, 10_000_000.0),
                group,
            )
        count = self.integer(raw["count"], where, "count", 1, 1_000_000)
        return Repeat(count, self.steps(raw["steps"], f"{where}.steps", names, depth + 1))

    def string(self, v: object, where: str, field: str) -> str:
        if not isinstance(v, str) or not v:
            raise self.fail(where, f"{field} must be a non-empty string, got {v!r}")
        return v

    def integer(self, v: object, where: str, field: str, lo: int, hi: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(where, f"{field} must be an integer in {lo}..{hi}, got {v!r}")
        return v

    def number(self, v: object, where: str, field: str, lo: float, hi: float) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise self.fail(where, f"{field} must be a number in {lo:g}..{hi:g}, got {v!r}")
        return float(v)


def parse_scenario(text: str, path: str = "<scenario>") -> Scenario:
    p = _Parser(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"scenario {path}: not valid TOML: {e}") from None
    except RecursionError:
        raise UsageError(f"scenario {path}: nested too deep to read") from None
    extra = set(data) - {"name", "steps"}
    if extra:
        raise UsageError(f"scenario {path}: unknown top-level key {', '.join(sorted(extra))}")
    if "steps" not in data:
        raise UsageError(f"scenario {path}: no [[steps]]")
    name = data.get("name", Path(path).stem)
    if not isinstance(name, str):
        raise UsageError(f"scenario {path}: name must be a string")
    return Scenario(name, path, p.steps(data["steps"], "step", set()))


BUILTIN_DIR = Path(__file__).resolve().parent / "scenarios"


def resolve_scenario(name_or_path: str) -> str:
    """A path to a scenario file, or the name of a shipped one (e.g. ``memhog``)."""
    if Path(name_or_path).exists() or "/" in name_or_path or name_or_path.endswith(".toml"):
        return name_or_path
    builtin = BUILTIN_DIR / f"{name_or_path}.toml"
    if builtin.exists():
        return str(builtin)
    return name_or_path


def load_scenario(path: str | Path) -> Scenario:
    path = resolve_scenario(str(path))
    text = read_small_text(str(path), "scenario", MAX_FILE_BYTES)
    return parse_scenario(text, str(path))


async def run_scenario(scenario: Scenario, ctx: WorkloadContext) -> None:
    await _run_steps(scenario.steps, ctx)


async def _run_steps(steps: tuple[Step, ...], ctx: WorkloadContext) -> None:
    # Every step yields to the event loop, whatever it is (a mark, a zero sleep):
    # a scenario of a million marks still lets --duration and SIGTERM stop it.
    for step in steps:
        await asyncio.sleep(0)
        if ctx.stop.is_set():
            return
        if isinstance(step, Alloc):
            await ctx.alloc_bytes(step.name, step.size, step.order)
        elif isinstance(step, Free):
            await ctx.free_group(step.name, step.stride, step.offset)
        elif isinstance(step, Sleep):
            await ctx.sleep(step.seconds)
        elif isinstance(step, Mark):
            ctx.mark(step.label)
        elif isinstance(step, Churn):
            await churn_for(ctx, step.occupancy, step.rate, seconds=step.seconds, group=step.name)
        else:
            for _ in range(step.count):
                if ctx.stop.is_set():
                    return
                await _run_steps(step.steps, ctx)
