"""Scenario files: a TOML list of steps run in order.

Steps (``op`` names the kind)::

    [[steps]]
    op = "alloc"      # name, size ("256MiB"), order (default 0)
    [[steps]]
    op = "free"       # name, stride (default 1), offset (default 0)
    [[steps]]
    op = "sleep"      # seconds; or until: seconds after the scenario began (the
                      # balloon's registration), to keep a recorded schedule;
                      # inside a repeat, after that turn began
    [[steps]]
    op = "mark"       # label: shows on timelines and plots
    [[steps]]
    op = "churn"      # seconds or ops (operations, one of them), occupancy (default
                      # 0.5), rate (ops/s, default 20000), name (default "churn": the
                      # group a later free can name). ops runs the same history on
                      # any backend or load; seconds does as many as the time allows
    [[steps]]
    op = "repeat"     # count, steps = [ {op = ...}, ... ]

A bad file is a UsageError naming the file, the step and what is wrong. Besides
each step's fields, the steps are followed as they will run (repeats too): an
alloc into a group that an earlier step still holds is refused (give it
another name, or free it first), and so, once the guest's RAM is known
(``load_scenario(path, ram_bytes)``), is a scenario that at some step holds
more than that RAM.
"""

from __future__ import annotations

import asyncio
import tomllib
from dataclasses import dataclass
from pathlib import Path

from guest.mm.constants import MAX_ORDER, PAGE_SIZE
from guest.workloads.base import WorkloadContext
from guest.workloads.builtin import churn_for
from pagehint.errors import UsageError
from pagehint.files import read_small_text
from pagehint.units import format_size, parse_size

MAX_NESTING = 16  # repeats inside repeats: deeper is a generated file gone wrong
MAX_FILE_BYTES = 1 << 20  # a scenario is a handful of steps; repeats make it long
MAX_STEPS = 100_000  # steps written out in the file (repeats not multiplied)
MAX_FOLLOWED = 2_000_000  # steps followed by the checks (each repeat at most twice)


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
    # Instead: sleep until this many seconds after the scenario began, or inside
    # a repeat after the turn began (no sleep if that time has passed). A
    # recorded history keeps its schedule with it however long this guest's own
    # steps take (bench/fidelity.py).
    until: float | None = None


@dataclass(frozen=True)
class Mark:
    label: str


@dataclass(frozen=True)
class Churn:
    seconds: float | None  # one of seconds and ops
    occupancy: float
    rate: float
    name: str = "churn"  # the group churn holds its blocks in (a later free can name it)
    ops: int | None = None


@dataclass(frozen=True)
class Repeat:
    count: int
    steps: tuple[Step, ...]


Step = Alloc | Free | Sleep | Mark | Churn | Repeat

_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    # op: (required, optional)
    "alloc": ({"name", "size"}, {"order"}),
    "free": ({"name"}, {"stride", "offset"}),
    "sleep": (set(), {"seconds", "until"}),
    "mark": ({"label"}, set()),
    "churn": (set(), {"seconds", "ops", "occupancy", "rate", "name"}),
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
            if ("seconds" in raw) == ("until" in raw):
                raise self.fail(where, "give seconds or until, one of them")
            if "until" in raw:
                return Sleep(0.0, self.number(raw["until"], where, "until", 0.0, 86400.0))
            return Sleep(self.number(raw["seconds"], where, "seconds", 0.0, 86400.0))
        if op == "mark":
            return Mark(self.string(raw["label"], where, "label"))
        if op == "churn":
            if ("seconds" in raw) == ("ops" in raw):
                raise self.fail(where, "give seconds or ops, one of them")
            group = self.string(raw.get("name", "churn"), where, "name")
            names.add(group)
            return Churn(
                self.number(raw["seconds"], where, "seconds", 0.0, 86400.0)
                if "seconds" in raw
                else None,
                self.number(raw.get("occupancy", 0.5), where, "occupancy", 0.0, 0.95),
                self.number(raw.get("rate", 20_000), where, "rate", 1.0, 10_000_000.0),
                group,
                self.integer(raw["ops"], where, "ops", 1, 10**9) if "ops" in raw else None,
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
    scenario = Scenario(name, path, p.steps(data["steps"], "step", set()))
    _Tally(path, None).follow(scenario.steps, "step")  # a group allocated twice
    return scenario


_OPS: dict[type, str] = {
    Alloc: "alloc",
    Free: "free",
    Sleep: "sleep",
    Mark: "mark",
    Churn: "churn",
    Repeat: "repeat",
}


@dataclass(frozen=True)
class _Held:
    """What a group holds at some point of the run."""

    churn: bool  # held by a churn step (which tops it up again), not by an alloc
    blocks: int
    pages: int
    where: str  # the step that filled it


class _Tally:
    """Follows a scenario's steps as run_scenario runs them, counting what each
    group holds: the most held at once (and at which step), and an alloc into a
    group still held (a second alloc of one name adds to the first, so a later
    free frees both: a copied step, not what its writer meant).

    A repeat is followed at most twice: its second turn starts from what the
    first left, and a third from no more than the second did (what its steps
    allocate they must free, or the second turn refuses it; groups from before
    the repeat can only shrink; churn tops its group up to the same target).
    """

    def __init__(self, path: str, nr_pages: int | None) -> None:
        self.path = path
        self.nr_pages = nr_pages  # None: names only (before the RAM is known)
        self.held: dict[str, _Held] = {}
        self.pages = 0  # held by every group together
        self.peak_pages = 0
        self.peak_where = ""
        self.followed = 0

    def fail(self, where: str, msg: str) -> UsageError:
        return UsageError(f"scenario {self.path}: {where}: {msg}")

    def follow(self, steps: tuple[Step, ...], prefix: str) -> None:
        for i, step in enumerate(steps):
            where = f"{prefix}[{i + 1}] ({_OPS[type(step)]})"
            self.followed += 1
            if self.followed > MAX_FOLLOWED:
                raise self.fail(
                    where, f"more than {MAX_FOLLOWED} steps to follow with its repeats nested"
                )
            if isinstance(step, Alloc):
                self.alloc(step, where)
            elif isinstance(step, Free):
                self.free(step)
            elif isinstance(step, Churn):
                self.churn(step, where)
            elif isinstance(step, Repeat):
                for _ in range(min(step.count, 2)):
                    before = dict(self.held)
                    self.follow(step.steps, f"{where}.steps")
                    if self.held == before:  # every later turn is this one again
                        break

    def alloc(self, step: Alloc, where: str) -> None:
        had = self.held.get(step.name)
        if had is not None:
            raise self.fail(
                where,
                f"allocates {step.name!r} again while {had.where} still holds it "
                "(give it another name, or free it first)",
            )
        blocks = -(-step.size // (PAGE_SIZE << step.order))
        self.hold(step.name, _Held(False, blocks, blocks << step.order, where))

    def free(self, step: Free) -> None:
        had = self.held.get(step.name)
        if had is None:
            return
        freed = len(range(step.offset, had.blocks, step.stride))
        if freed >= had.blocks:
            del self.held[step.name]
            self.pages -= had.pages
        elif freed:
            pages = had.pages - had.pages * freed // had.blocks
            self.hold(step.name, _Held(had.churn, had.blocks - freed, pages, had.where))

    def churn(self, step: Churn, where: str) -> None:
        had = self.held.get(step.name)
        if had is not None and not had.churn:
            raise self.fail(
                where,
                f"churns in {step.name!r}, which {had.where} allocated and still holds "
                "(give the churn another name, or free it first)",
            )
        # Churn holds about occupancy x RAM of its own blocks (orders 0..3: 3.75
        # pages on average), whatever else the guest holds.
        pages = 0 if self.nr_pages is None else int(self.nr_pages * step.occupancy)
        self.hold(step.name, _Held(True, max(1, pages * 4 // 15), pages, where))

    def hold(self, name: str, held: _Held) -> None:
        """``name`` now holds ``held`` (in place of what it held)."""
        had = self.held.get(name)
        self.pages += held.pages - (had.pages if had is not None else 0)
        self.held[name] = held
        if self.pages > self.peak_pages:
            self.peak_pages, self.peak_where = self.pages, held.where


BUILTIN_DIR = Path(__file__).resolve().parent / "scenarios"


def resolve_scenario(name_or_path: str) -> str:
    """A path to a scenario file, or the name of a shipped one (e.g. ``memhog``)."""
    if Path(name_or_path).exists() or "/" in name_or_path or name_or_path.endswith(".toml"):
        return name_or_path
    builtin = BUILTIN_DIR / f"{name_or_path}.toml"
    if builtin.exists():
        return str(builtin)
    return name_or_path


def load_scenario(path: str | Path, ram_bytes: int | None = None) -> Scenario:
    """The scenario at ``path`` (or a shipped one's name); given the guest's RAM,
    also refused if it would hold more than that RAM (``check_fits``)."""
    path = resolve_scenario(str(path))
    text = read_small_text(str(path), "scenario", MAX_FILE_BYTES)
    scenario = parse_scenario(text, str(path))
    if ram_bytes is not None:
        check_fits(scenario, ram_bytes)
    return scenario


def check_fits(scenario: Scenario, ram_bytes: int) -> None:
    """UsageError (one line, both sizes) if the scenario at some step holds more
    memory than the guest has RAM: most of its allocations would fail.

    RAM is what a workload can hold: the allocator holds nothing back from it
    (BuddyAllocator.alloc takes any free page; the zones' watermarks only
    limit what hinting may isolate), so a scenario may fill RAM exactly (the
    shipped memhog does, in a 256 MiB guest). Churn counts its target, its
    occupancy of RAM.
    """
    tally = _Tally(scenario.path, ram_bytes // PAGE_SIZE)
    tally.follow(scenario.steps, "step")
    peak = tally.peak_pages * PAGE_SIZE
    if peak > ram_bytes:
        raise UsageError(
            f"scenario {scenario.path}: holds {format_size(peak)} at {tally.peak_where}, more "
            f"than the guest's {format_size(ram_bytes)} of RAM (--ram): give the guest more "
            "RAM or the scenario less memory"
        )


async def run_scenario(
    scenario: Scenario, ctx: WorkloadContext, began: float | None = None
) -> None:
    """Run the steps; a `sleep` with `until` counts from ``began`` (ctx.now()
    seconds; the guest passes its balloon's registration), or from now."""
    await _run_steps(scenario.steps, ctx, ctx.now() if began is None else began)


async def _run_steps(steps: tuple[Step, ...], ctx: WorkloadContext, began: float) -> None:
    # Every step yields to the event loop, whatever it is (a mark, a zero sleep):
    # a scenario of a million marks still lets --duration and SIGTERM stop it.
    for step in steps:
        await asyncio.sleep(0)
        if ctx.stop.is_set():
            return
        await ctx.unpaused()
        if isinstance(step, Alloc):
            await ctx.alloc_bytes(step.name, step.size, step.order)
        elif isinstance(step, Free):
            await ctx.free_group(step.name, step.stride, step.offset)
        elif isinstance(step, Sleep):
            if step.until is None:
                await ctx.sleep(step.seconds)
            else:
                await ctx.sleep(began + step.until - ctx.now())
        elif isinstance(step, Mark):
            ctx.mark(step.label)
        elif isinstance(step, Churn):
            await churn_for(
                ctx, step.occupancy, step.rate, seconds=step.seconds, group=step.name, ops=step.ops
            )
        else:
            for _ in range(step.count):
                if ctx.stop.is_set():
                    return
                # Inside a repeat, `until` counts from the turn's start: a schedule
                # per turn (from the scenario's start, every later turn would find
                # its times past and run flat out).
                await _run_steps(step.steps, ctx, ctx.now())
