"""The kernel's page allocator trace events, as ftrace prints them.

Reads the text of tracefs's ``trace`` file or of ``trace-cmd report``: lines of
``TASK-PID [CPU] FLAGS TIMESTAMP: EVENT: FIELDS``, where the events replayed are
(include/trace/events/kmem.h):

- ``mm_page_alloc: page=%p pfn=0x%lx order=%d migratetype=%d gfp_flags=%s``;
  a failed allocation prints ``page=(null)`` (and pfn 0): counted, not replayed;
- ``mm_page_free: page=%p pfn=0x%lx order=%d``;
- ``mm_page_free_batched: page=%p pfn=0x%lx order=0`` (order 0 always).

A page freed through the batched path is traced twice: free_pages_prepare()
emits ``mm_page_free`` and free_unref_folios() (free_hot_cold_page_list() in
older kernels) then emits ``mm_page_free_batched`` for the same page (seen in
the shipped trace: the pair, same pfn, microseconds apart). So when a trace has
``mm_page_free`` events, the batched ones are the same frees told again and are
counted, not replayed; a trace recorded with only ``mm_page_free_batched``
replays them as the frees.

Older kernels print ``pfn=%lu`` (decimal): both are read. Other events are
skipped and counted by name; comment and header lines (``#``, ``cpus=``,
``CPU N is empty``) are skipped; ``CPU:N [LOST K EVENTS]`` adds K to the lost
count. Any other line is malformed: an error naming the line, unless lenient.
A gzip-compressed file is read as it is.
"""

from __future__ import annotations

import gzip
import os
import re
import stat
import zlib
from array import array
from dataclasses import dataclass, field
from typing import IO

ALLOC = 0
FREE = 1
_BATCHED = 2  # parsed as such; a FREE or dropped once the whole trace is read

# TASK-PID, an optional (TGID) column, [CPU], optional flags (irqs-off,
# need-resched, hardirq/softirq, preempt depth, migrate-disable), TIMESTAMP:
_LINE = re.compile(
    r"\s*(?P<task>.*?)-(?P<pid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?:[^\s:\[\]]{3,8}\s+)?(?P<ts>\d+(?:\.\d+)?):\s+(?P<event>[\w:]+):(?P<body>.*)"
)
_PFN = re.compile(r"\bpfn=(0x[0-9a-fA-F]+|\d+)\b")
_ORDER = re.compile(r"\border=(\d+)\b")
# A NULL page: "(null)" (padded to the pointer's width before 5.2), glibc's
# "(nil)" from libtraceevent, or zeros.
_NULL_PAGE = re.compile(r"\bpage=\s*(?:\(null\)|\(nil\)|0+\b|0x0+\b)")
# The kernel's "CPU:N [LOST N EVENTS]" / "CPU:N [LOST EVENTS]" (count unknown),
# trace-cmd's "CPU:N [N EVENTS DROPPED]" / "CPU:N [EVENTS DROPPED]".
_LOST = re.compile(r"CPU:?\s*\d+\s*\[(?:LOST (\d+)? ?EVENTS|(\d+)? ?EVENTS DROPPED)\]")
_HEADER = re.compile(r"cpus=\d+|version\s*=\s*\d+|CPU \d+ is empty|#{3,}.*")
_EVENTS = {"mm_page_alloc": ALLOC, "mm_page_free": FREE, "mm_page_free_batched": _BATCHED}
_MAX_ORDER_IN_TRACE = 10  # the kernel's MAX_PAGE_ORDER on x86-64 (a larger order is bad input)
_TRACE_DAT = b"\x17\x08\x44tracing"


class TraceError(Exception):
    """A trace that cannot be read: the message names the file and line."""


@dataclass
class Trace:
    """Replayable events in file order, as parallel arrays (compact for millions)."""

    path: str
    kinds: bytearray = field(default_factory=bytearray)
    pfns: array[int] = field(default_factory=lambda: array("q"))
    orders: bytearray = field(default_factory=bytearray)
    times: array[float] = field(default_factory=lambda: array("d"))
    lines: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # other events, by name
    failed_allocs: int = 0  # mm_page_alloc of page=(null): the kernel found none
    lost_events: int = 0  # the tracer's own [LOST N EVENTS] markers
    lost_markers: int = 0  # markers of lost events whose count the tracer did not know
    seconds_clock: bool = True  # False: integer timestamps (a counter or TSC clock)
    malformed: int = 0  # lenient only
    malformed_examples: list[str] = field(default_factory=list)
    batched_duplicates: int = 0  # mm_page_free_batched told again after mm_page_free
    batched_only: bool = False  # frees known only from mm_page_free_batched (order 0 only)

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def pfn_range(self) -> tuple[int, int] | None:
        """Lowest pfn and one past the highest page any event touches."""
        if not self.kinds:
            return None
        ends = (p + (1 << o) for p, o in zip(self.pfns, self.orders, strict=True))
        return min(self.pfns), max(ends)

    @property
    def duration(self) -> float:
        # max - min: a merged trace's clock can step back between CPUs' buffers
        return max(self.times) - min(self.times) if len(self.times) > 1 else 0.0


MAX_LINE = 64 * 1024  # a trace line is ~150 characters; far longer is not a trace


def _open(path: str) -> IO[str]:
    if os.path.isdir(path):
        raise TraceError(f"{path}: a folder, not a trace file")
    try:
        st = os.stat(path)
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        # A pipe cannot be read twice (the format check, then the events) and a
        # device may never end: save the trace to a file first.
        raise TraceError(f"{path}: not a regular file (save the trace to a file first)")
    try:
        with open(path, "rb") as f:
            magic = f.read(10)
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e.strerror}") from None
    if magic.startswith(_TRACE_DAT):
        raise TraceError(
            f"{path}: a trace-cmd binary file; give its text: trace-cmd report -i {path} > FILE"
        )
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def parse_trace(path: str, lenient: bool = False) -> Trace:
    """Read every replayable event of ``path``; TraceError on the first malformed line
    (or, when ``lenient``, count malformed lines and go on)."""
    trace = Trace(path=path)
    kinds, pfns, orders, times = trace.kinds, trace.pfns, trace.orders, trace.times
    skipped, match_line = trace.skipped, _LINE.match
    lineno = 0

    def bad(why: str, line: str) -> None:
        if not lenient:
            raise TraceError(f"{path}:{lineno}: {why}: {line.strip()[:120]!r}")
        trace.malformed += 1
        if len(trace.malformed_examples) < 3:
            trace.malformed_examples.append(f"line {lineno}: {why}")

    try:
        with _open(path) as f:
            readline = f.readline
            while True:
                line = readline(MAX_LINE)
                if not line:
                    break
                lineno += 1
                if len(line) == MAX_LINE and not line.endswith("\n"):
                    raise TraceError(f"{path}:{lineno}: a line longer than {MAX_LINE} characters")
                if "\x00" in line:
                    bad("binary data, not ftrace text", line)
                    continue
                m = match_line(line)
                if m is None:
                    if not _other_line(line.strip(), trace):
                        bad("not an ftrace event line", line)
                    continue
                event = m.group("event").rsplit(":", 1)[-1]
                kind = _EVENTS.get(event)
                if kind is None:
                    skipped[event] = skipped.get(event, 0) + 1
                    continue
                got = _fields(kind, event, m.group("body"), trace)
                if isinstance(got, str):
                    bad(got, line)
                    continue
                if got is None:
                    continue
                pfn, order = got
                kinds.append(kind)
                pfns.append(pfn)
                orders.append(order)
                ts = m.group("ts")
                if "." not in ts:
                    trace.seconds_clock = False
                times.append(float(ts))
    # zlib.error: a .gz whose compressed data is damaged (not merely cut short).
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        why = getattr(e, "strerror", None) or str(e)
        raise TraceError(f"{path}: cannot read past line {lineno}: {why}") from None
    except OverflowError:
        raise TraceError(f"{path}:{lineno}: pfn too large") from None
    trace.lines = lineno
    return _settle_batched(trace)


def _other_line(text: str, trace: Trace) -> bool:
    """A line that is no event: a comment, a header, or a lost-events marker
    (counted). False for anything else (malformed)."""
    if not text or text[0] == "#" or _HEADER.fullmatch(text):
        return True
    lost = _LOST.search(text)
    if lost is None:
        return False
    n = lost.group(1) or lost.group(2)
    if n is None:
        trace.lost_markers += 1
    else:
        trace.lost_events += int(n)
    return True


def _fields(kind: int, event: str, body: str, trace: Trace) -> tuple[int, int] | str | None:
    """(pfn, order) of an event; None for a failed allocation (counted); else why the
    line is malformed."""
    pm = _PFN.search(body)
    om = _ORDER.search(body)
    if pm is None or (om is None and event != "mm_page_free_batched"):
        return f"{event} without pfn= and order="
    text = pm.group(1)
    pfn = int(text, 16) if text[1:2] in ("x", "X") else int(text)
    # A failed allocation prints a NULL page and pfn 0 (x86 never hands out pfn 0:
    # the first page is reserved for the BIOS).
    if kind == ALLOC and (pfn == 0 or _NULL_PAGE.search(body)):
        trace.failed_allocs += 1
        return None
    order = int(om.group(1)) if om is not None else 0
    if order > _MAX_ORDER_IN_TRACE:
        return f"order {order} is above {_MAX_ORDER_IN_TRACE}"
    return pfn, order


def _settle_batched(trace: Trace) -> Trace:
    """Pair each batched free with the mm_page_free of the same page (after it in
    current kernels, before it in 3.3-4.13): paired, it is a duplicate and dropped;
    unpaired (its mm_page_free filtered out or lost), it is the free."""
    kinds = trace.kinds
    if _BATCHED not in kinds:
        return trace
    pfns = trace.pfns
    # Only order 0 is printed for a batched free, whatever the folio's order (6.10+
    # batch-frees large folios too): a trace without mm_page_free under-reads them.
    trace.batched_only = FREE not in kinds
    drop: set[int] = set()
    freed: dict[int, int] = {}  # pfn -> index of its mm_page_free not yet paired
    waiting: dict[int, int] = {}  # pfn -> index of a batched free not yet paired
    for i, k in enumerate(kinds):
        pfn = pfns[i]
        if k == FREE:
            j = waiting.pop(pfn, None)
            if j is not None:
                drop.add(j)
            else:
                freed[pfn] = i
        elif k == _BATCHED:
            if freed.pop(pfn, None) is not None:
                drop.add(i)
            else:
                waiting[pfn] = i
        else:  # an allocation ends what was pending for the page
            freed.pop(pfn, None)
            j = waiting.pop(pfn, None)
            if j is not None:
                kinds[j] = FREE
    for j in waiting.values():
        kinds[j] = FREE
    keep = [i for i in range(len(kinds)) if i not in drop]
    trace.kinds = bytearray(kinds[i] for i in keep)
    trace.pfns = array("q", (trace.pfns[i] for i in keep))
    trace.orders = bytearray(trace.orders[i] for i in keep)
    trace.times = array("d", (trace.times[i] for i in keep))
    trace.batched_duplicates = len(drop)
    return trace
