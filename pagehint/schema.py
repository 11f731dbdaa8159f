"""What a guest reports, typed once: its end-of-run summary, its timeline rows and
its per-chain report log, with the one JSON encoder and decoder everyone uses.

A guest writes these (guest.runtime, guest.service, guest.balloon.driver); the
lab commands, the tests and anyone scripting around pagehint read them. The
field comments below are the reference; README's "What the output means"
explains the headline ones.

The decoder checks an object has the required keys of the record's kind and
that each field holds its annotated kind (nested records too), and fails with
one plain line: a summary from a different version or a truncated line is a
clear error, not a KeyError three calls later.
"""

# No `from __future__ import annotations` here: TypedDict reads NotRequired from
# evaluated annotations only (with strings, every key counts as required).
import json
import math
import types
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import (
    Literal,
    NotRequired,
    TypedDict,
    TypeVar,
    Union,
    cast,
    get_args,
    get_origin,
    get_type_hints,
)

from pagehint.errors import UsageError


class Percentiles(TypedDict):
    """Of a set of latencies, in ms (None: no samples)."""

    p50: float | None
    p99: float | None
    max: float | None


class Mark(TypedDict):
    t: float  # seconds since the guest started
    label: str  # a scenario's `mark` step, or trace-start / trace-end


class TraceSummary(TypedDict):
    """A `--trace` replay (guest.trace.replay.summary)."""

    file: str
    events: int  # allocation and free events the trace holds
    replayed: int  # of them, replayed before the run ended
    allocs: int
    frees: int
    speed: float | None  # None: as fast as possible (--speed max)
    seconds: float  # wall time the replay took
    events_per_s: int | None
    trace_seconds: float  # the trace's own span, by its clock
    behind_s: float  # how far the replay fell behind the trace clock at worst
    mapping: str  # --trace-map: identity | compact
    pfn_range: list[str] | None  # [first, last] pfn in the trace, hex
    initially_allocated_pages: int  # allocated before the first event (freed later)
    inconsistencies: dict[str, int]  # events the allocator could not apply, by kind
    substituted: int  # allocations of blocks under report that took another block
    untouched_allocated_pages: int  # pages the trace never names, held allocated
    untouched_reported_pages: NotRequired[int]  # ...or free and marked reported
    block_fill: NotRequired[float]  # pages named / pages of the 4 MiB blocks touched
    seconds_clock: bool  # the trace's clock is seconds (not a counter)
    batched_only: bool  # frees known only from mm_page_free_batched
    lost_markers: int
    skipped_events: dict[str, int]  # other tracepoints in the file, by name
    failed_allocs_in_trace: int
    lost_events: int
    batched_duplicates: int
    malformed_lines: int


class Drop(TypedDict):
    """After a mark whose label holds "free": how fast the host's figure fell."""

    mark: str
    t: float  # the mark's time
    drop_bytes: int  # from the peak after the mark to the low before the next free
    t50_s: float | None  # seconds from the mark to half the drop (None: no drop)
    t90_s: float | None


class GuestSummary(TypedDict):
    """One guest's end of run: the last line `pagehint guest --json` prints.

    Sizes are bytes; host_* figures are what the host said (None: it said
    nothing, e.g. no host). Counters are over the whole run.
    """

    guest_id: str
    policy: str  # bitmap | reporting | none | a plugin's module:Class
    ram_bytes: int
    duration_s: float
    reported_bytes: int  # acknowledged by a host (DONE), every session
    reported_blocks: int
    chains: int  # reports (virtqueue chains) acknowledged
    report_failures: int  # reports that did not count: refused, failed, cancelled, or
    # never sent (no host: "unavailable"); by reason in report_failures_by_reason
    report_failures_by_reason: dict[str, int]
    isolation_refused: int
    abandoned_reports: int  # left isolated because the host never answered
    abandoned_bytes: int
    stale_bits: int  # bitmap policy: bits whose block was gone when the worker looked
    walks: int
    isolated_peak_bytes: int
    worker_seconds: float
    free_bytes: int
    reportable_free_bytes: int  # free, in blocks of the policy's order or larger
    host_resident_bytes: int | None
    ack_latency_ms: Percentiles  # send to acknowledgement, per chain
    alloc_ops: int
    alloc_failures: int
    alloc_latency_ms: Percentiles
    data_loss_pages: int  # pages whose contents were lost (shm backend only)
    data_loss_checked: bool  # False: nothing could check (not real guest RAM)
    stopped_by_signal: bool
    isolated_bytes: int  # still isolated at the end: non-zero only if abandoned
    allocated_bytes: int
    invariants: str | None  # "ok", "broken: ...", or None (run without --check)
    marks: list[Mark]
    timeline_error: str | None  # why --timeline stopped being written
    policy_errors: list[str]  # contract breaks of a policy (docs/policies.md)
    trace: TraceSummary | None
    # Set by the guest service (guest.service), after the run:
    backend: NotRequired[str]  # loopback | the host's backend (sim, shm, ...)
    ack_log_error: NotRequired[str | None]
    poison_errors: NotRequired[int]
    pages_checked: NotRequired[int]
    # shm: accesses still waiting for the host when the run ended, so the final
    # check of every held page was skipped (host gone, or too slow to bring them
    # back); the checks at frees before that were made. 0: the final check ran.
    final_check_skipped: NotRequired[int]
    host_reported_bytes: NotRequired[int | None]
    host_chains: NotRequired[int | None]
    host_refused_chains: NotRequired[int | None]
    host_failed_chains: NotRequired[int | None]
    host_poison_skipped_chains: NotRequired[int | None]
    host_measured_by_kernel: NotRequired[bool]  # host_resident_bytes read from the kernel
    reported_bytes_this_host: NotRequired[int]  # since the last host (re)start
    host_connects: NotRequired[int]
    fences: NotRequired[int]
    fenced_done_chains: NotRequired[int]
    fenced_cancelled_chains: NotRequired[int]
    stalled_reports: NotRequired[int]
    touched_bytes_sent: NotRequired[int]
    # The host's memory model (issue 23; set by the guest service, absent from older files):
    # with a host without --host-memory they stay 0 / None / false.
    major_faults: NotRequired[int]  # touches of frames the host had swapped out (Notices)
    minor_faults: NotRequired[int]  # touches of frames the host zero-filled (Notices)
    fault_wait_seconds: NotRequired[float]  # what the workload really waited for them
    swapped_bytes: NotRequired[int | None]  # of this guest in the host's swap, last heard
    oom_killed: NotRequired[bool]  # the host's OOM killer ended the guest (exit status 3)
    # The rest of the balloon (issue 24; absent from older files, 0 without a host
    # that has it): the host's last target, pages inflated over the run, and what
    # deflate-on-oom took back for failed allocations.
    balloon_target_bytes: NotRequired[int]
    balloon_inflated_bytes: NotRequired[int]
    balloon_oom_deflated_bytes: NotRequired[int]
    balloon_oom_deflations: NotRequired[int]
    balloon_inflate_shortfalls: NotRequired[int]  # fills cut short ("out of puff")
    # Allocations that failed at first and asked the OOM notifiers (the stats'
    # alloc-stalls; retried once if the balloon gave pages back).
    balloon_alloc_stalls: NotRequired[int]
    # Free page hinting (issue 25; absent from older files): runs answered, the
    # blocks sent over the run, and those the shrinker took back under pressure.
    free_page_hint_runs: NotRequired[int]
    free_page_hinted_bytes: NotRequired[int]
    free_page_hint_shrunk_bytes: NotRequired[int]
    snapshots: NotRequired[int]  # snapshots the host took of this guest (issue 25)
    # Added by the lab commands (demo, compare, sweep) from the guest's timeline
    # (lab/pipeline.py):
    host_resident_peak_bytes: NotRequired[int | None]
    drops: NotRequired[list[Drop]]


class ResidentPoint(TypedDict):
    """What plots and drop timing read of a row: every TimelineRow is one, and so
    are the lab's own series (the loadtest's host-wide samples)."""

    t: float
    host_resident_bytes: int | None
    mark: NotRequired[str]


Event = Literal["sample", "mark", "ack", "end"]


class TimelineRow(TypedDict):
    """One line of `--timeline`: periodic ("sample", every 0.1 s), at a mark, at
    acknowledgements (at most 100 rows/s), and one at the end."""

    t: float  # seconds since the guest started
    event: Event
    free_bytes: int
    isolated_bytes: int  # taken off the free lists, under report
    allocated_bytes: int
    pcp_bytes: NotRequired[int]  # of free_bytes, on per-CPU lists: reported only once drained
    reported_bytes: int  # acknowledged so far
    host_resident_bytes: int | None  # what the host holds for this guest (None: unknown)
    mark: NotRequired[str]  # event "mark": its label
    chain: NotRequired[int]  # event "ack": the last chain acknowledged DONE
    # The host's memory model (issue 23): in every row once the host negotiated
    # host_memory (see GuestSummary), so far in the run; oom_killed in the "end" row.
    major_faults: NotRequired[int]
    minor_faults: NotRequired[int]
    fault_wait_seconds: NotRequired[float]
    swapped_bytes: NotRequired[int | None]
    oom_killed: NotRequired[bool]
    # The rest of the balloon (issue 24): in every row once the host negotiated it.
    balloon_target_bytes: NotRequired[int]
    balloon_bytes: NotRequired[int]  # in the balloon now (its actual)


class ReportRecord(TypedDict):
    """One line of `--reports`: a chain, from send to answer."""

    chain: int
    t_sent: float  # seconds since the driver started
    t_answered: float
    ranges: list[list[int]]  # [pfn, order] per range
    bytes: int
    status: str  # done | refused | discard_failed
    reason: str
    host_resident_bytes: int | None  # right after its discard (None: settled by a fence)


R = TypeVar("R", GuestSummary, TimelineRow, ReportRecord)

_NAMES: dict[type, str] = {
    GuestSummary: "guest summary",
    TimelineRow: "timeline row",
    ReportRecord: "report record",
}


# ---- checking decoded JSON against the types above ----------------------------------
# Each field's value is checked against its annotation, nested records too, so
# that a reader never meets a string where it adds numbers. Built once per kind
# (the decoder runs per timeline line).

Fits = Callable[[object], bool]


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


def _fits(hint: object) -> Fits:
    """A predicate for values of the annotation ``hint`` (those this module uses)."""
    if hint is type(None):
        return lambda v: v is None
    if hint is int:
        return _is_int
    if hint is float:
        return _is_number
    if hint in (str, bool):
        kind = cast(type, hint)
        return lambda v: isinstance(v, kind)
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        alternatives = [_fits(a) for a in args]
        return lambda v: any(f(v) for f in alternatives)
    if origin is Literal:
        return lambda v: v in args
    if origin is list:
        item = _fits(args[0])
        return lambda v: isinstance(v, list) and all(item(x) for x in v)
    if origin is dict:
        value = _fits(args[1])
        return lambda v: isinstance(v, dict) and all(value(x) for x in v.values())
    if isinstance(hint, type) and issubclass(hint, dict):  # a nested TypedDict
        record = _record_check(hint)
        return lambda v: isinstance(v, dict) and record(v) is None
    if hint is object:
        return lambda v: True
    raise TypeError(f"schema: no check for {hint!r}")


def _record_check(kind: type) -> Callable[[dict[str, object]], str | None]:
    """What is wrong with a decoded object as a ``kind`` (None: nothing)."""
    hints = get_type_hints(kind)  # NotRequired[...] already unwrapped
    fits = {name: _fits(h) for name, h in hints.items()}
    shown = {name: _show(h) for name, h in hints.items()}
    required = frozenset(vars(kind)["__required_keys__"])

    def problem(obj: dict[str, object]) -> str | None:
        missing = required - obj.keys()
        if missing:
            return f"missing {', '.join(sorted(missing))}"
        for name, value in obj.items():
            ok = fits.get(name)
            if ok is not None and not ok(value):
                return f"{name} is {json.dumps(value)[:40]}, not {shown[name]}"
        return None

    return problem


def _show(hint: object) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


_CHECKS = {k: _record_check(k) for k in (GuestSummary, TimelineRow, ReportRecord)}


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number a guest writes")


def decode(kind: type[R], text: str | bytes) -> R:
    """One record from its JSON text; UsageError (one line) if it is not one."""
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except ValueError as e:
        raise UsageError(f"not a {_NAMES[kind]}: invalid JSON ({e})") from None
    except RecursionError:
        raise UsageError(f"not a {_NAMES[kind]}: nested too deeply") from None
    return check(kind, obj)


def check(kind: type[R], obj: object) -> R:
    """``obj`` (decoded JSON) as a ``kind``, if its fields are that kind's."""
    if not isinstance(obj, dict):
        raise UsageError(f"not a {_NAMES[kind]}: a JSON {type(obj).__name__}, not an object")
    problem = _CHECKS[kind](obj)
    if problem is not None:
        raise UsageError(f"not a {_NAMES[kind]}: {problem}")
    return cast(R, obj)


def encode(record: Mapping[str, object]) -> str:
    """One record as one JSON line (no newline)."""
    return json.dumps(record)


def read_lines(kind: type[R], path: Path) -> list[R]:
    """Every record of a JSON-lines file (a timeline, a report log); [] if absent.
    A bad line is one UsageError naming the file and the line."""
    if not path.exists():
        return []
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror or e}") from None
    out: list[R] = []
    for n, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            out.append(decode(kind, raw.decode("utf-8")))
        except UnicodeDecodeError:
            raise UsageError(f"{path}:{n}: not UTF-8 text") from None
        except UsageError as e:
            raise UsageError(f"{path}:{n}: {e}") from None
    return out


def field_names(kind: type[object]) -> list[str]:
    """The documented fields of a record kind, in order (for docs and tests)."""
    return list(get_type_hints(kind))


def write_lines(path: Path, records: Iterable[Mapping[str, object]]) -> None:
    with path.open("w") as f:
        for r in records:
            f.write(encode(r) + "\n")
