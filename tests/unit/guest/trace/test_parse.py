"""ftrace text of the kernel's page allocator events: every form, and bad lines."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from guest.trace.parse import ALLOC, FREE, TraceError, parse_trace

HEADER = """\
# tracer: nop
#
# entries-in-buffer/entries-written: 6/6   #P:2
#
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
"""
# tracefs `trace` (6.x: five flag columns), pfn in hex
ALLOC_HEX = (
    "         python3-6791    [000] ..... 21236.326993: mm_page_alloc: "
    "page=00000000a357c802 pfn=0x309008 order=0 migratetype=0 gfp_flags=GFP_USER|__GFP_ZERO\n"
)
FREE_HEX = (
    "         python3-6791    [000] ...2. 21236.327000: mm_page_free: "
    "page=00000000a357c802 pfn=0x309008 order=0\n"
)
BATCHED = (
    "         python3-6791    [000] ...4. 21236.327001: mm_page_free_batched: "
    "page=00000000a357c802 pfn=0x309008 order=0\n"
)
# an older kernel: decimal pfn, four flag columns, a task name with spaces and dashes
OLD_ALLOC = (
    "  Web Content-x-1234  [001] d..1  1234.500000: mm_page_alloc: "
    "page=ffffea0000abcd00 pfn=703232 order=3 migratetype=1 gfp_flags=GFP_KERNEL\n"
)
OLD_FREE = "  Web Content-x-1234  [001] d..1  1234.600000: mm_page_free: page=ffffea0000abcd00 pfn=703232 order=3\n"
# trace-cmd report: no flag column, a cpus= header, and a (TGID) column
REPORT = """\
cpus=2
CPU 1 is empty
          python3-6791  [000] 21236.326993: mm_page_alloc:        page=0xffffea000c240200 pfn=0x309008 order=2 migratetype=0 gfp_flags=GFP_USER
          python3-6791  (   6791) [000] 21236.427000: mm_page_free:         page=0xffffea000c240200 pfn=0x309008 order=2
"""


def write(tmp_path: Path, text: str, name: str = "t.trace") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_tracefs_text_with_both_free_events(tmp_path: Path) -> None:
    t = parse_trace(write(tmp_path, HEADER + ALLOC_HEX + FREE_HEX + BATCHED))
    assert list(t.kinds) == [ALLOC, FREE]  # the batched free is the same free told again
    assert list(t.pfns) == [0x309008, 0x309008] and list(t.orders) == [0, 0]
    assert t.batched_duplicates == 1
    assert t.times[1] - t.times[0] == pytest.approx(7e-6)
    assert t.pfn_range == (0x309008, 0x309009)


def test_batched_frees_alone_are_the_frees(tmp_path: Path) -> None:
    t = parse_trace(write(tmp_path, ALLOC_HEX + BATCHED))
    assert list(t.kinds) == [ALLOC, FREE] and t.batched_duplicates == 0


def test_decimal_pfns_old_flags_and_task_names_with_dashes(tmp_path: Path) -> None:
    t = parse_trace(write(tmp_path, OLD_ALLOC + OLD_FREE))
    assert list(t.pfns) == [703232, 703232] and list(t.orders) == [3, 3]


def test_trace_cmd_report_output(tmp_path: Path) -> None:
    t = parse_trace(write(tmp_path, REPORT))
    assert list(t.kinds) == [ALLOC, FREE] and list(t.orders) == [2, 2]


def test_other_events_failed_allocations_and_lost_markers_are_counted(tmp_path: Path) -> None:
    text = (
        ALLOC_HEX
        + "  kworker/0:1-12 [000] ..... 5.000000: mm_page_alloc_zone_locked: page=0 pfn=0x1 order=0\n"
        + "  kworker/0:1-12 [000] ..... 5.000001: kmalloc: call_site=foo ptr=0 bytes_req=8\n"
        + "  kworker/0:1-12 [000] ..... 5.000002: mm_page_alloc: page=(null) pfn=0x0 order=4 "
        "migratetype=0 gfp_flags=GFP_KERNEL\n"
        + "CPU:1 [LOST 17 EVENTS]\n"
        + "##### CPU 1 buffer started ####\n"
    )
    t = parse_trace(write(tmp_path, text))
    assert len(t) == 1
    assert t.skipped == {"mm_page_alloc_zone_locked": 1, "kmalloc": 1}
    assert t.failed_allocs == 1 and t.lost_events == 17


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("this is not a trace\n", "not an ftrace event line"),
        ("  a-1 [000] ..... 1.0: mm_page_free: page=0 order=0\n", "without pfn="),
        ("  a-1 [000] ..... 1.0: mm_page_alloc: pfn=0x10 migratetype=0\n", "without pfn="),
        ("  a-1 [000] ..... 1.0: mm_page_free: pfn=0x10 order=42\n", "order 42"),
    ],
)
def test_a_malformed_line_is_an_error_naming_it(tmp_path: Path, line: str, why: str) -> None:
    path = write(tmp_path, HEADER + ALLOC_HEX + line)
    with pytest.raises(TraceError) as e:
        parse_trace(path)
    assert f"{path}:8:" in str(e.value) and why in str(e.value)
    lenient = parse_trace(path, lenient=True)
    assert lenient.malformed == 1 and len(lenient) == 1
    assert lenient.malformed_examples[0].startswith("line 8:")


def test_gzip_and_unreadable_files(tmp_path: Path) -> None:
    gz = tmp_path / "t.trace.gz"
    gz.write_bytes(gzip.compress((ALLOC_HEX + FREE_HEX).encode()))
    assert len(parse_trace(str(gz))) == 2
    with pytest.raises(TraceError, match="cannot read"):
        parse_trace(str(tmp_path / "missing"))
    with pytest.raises(TraceError, match="a folder"):
        parse_trace(str(tmp_path))
    dat = tmp_path / "trace.dat"
    dat.write_bytes(b"\x17\x08\x44tracing6\x00\x00")
    with pytest.raises(TraceError, match="trace-cmd report"):
        parse_trace(str(dat))
    broken = tmp_path / "broken.gz"
    whole = gzip.compress((ALLOC_HEX * 400).encode())
    broken.write_bytes(whole[: len(whole) - 12])
    with pytest.raises(TraceError, match="cannot read past line"):
        parse_trace(str(broken))


def test_the_shipped_trace_parses() -> None:
    root = Path(__file__).resolve().parents[4]
    t = parse_trace(str(root / "examples" / "traces" / "python-grow-shrink.trace.gz"))
    assert len(t) > 40_000 and t.malformed == 0 and t.lost_events == 0
    assert t.batched_duplicates > 0


def test_null_pages_in_every_spelling_and_pfn_zero_are_failed_allocations(tmp_path: Path) -> None:
    lines = [
        "  a-1 [000] ..... 1.0: mm_page_alloc: page=          (null) pfn=0 order=2 migratetype=0 gfp_flags=X\n",
        "  a-1 [000] ..... 1.1: mm_page_alloc: page=(nil) pfn=0x0 order=0 migratetype=0 gfp_flags=X\n",
        "  a-1 [000] ..... 1.2: mm_page_alloc: page=000000004e3f0c2a pfn=0x0 order=0 migratetype=0 gfp_flags=X\n",
    ]
    t = parse_trace(write(tmp_path, "".join(lines)))
    assert len(t) == 0 and t.failed_allocs == 3


def test_every_lost_events_marker(tmp_path: Path) -> None:
    text = ALLOC_HEX + (
        "CPU:0 [LOST 5 EVENTS]\nCPU:1 [LOST EVENTS]\nCPU:0 [7 EVENTS DROPPED]\nCPU:1 [EVENTS DROPPED]\n"
    )
    t = parse_trace(write(tmp_path, text))
    assert t.lost_events == 12 and t.lost_markers == 2


def test_batched_frees_pair_with_their_own_page_in_either_order(tmp_path: Path) -> None:
    def ev(t: float, event: str, pfn: int) -> str:
        return f"  a-1 [000] ..... {t:.6f}: {event}: page=0000000012345678 pfn={pfn:#x} order=0\n"

    text = "".join(
        [
            ev(1.0, "mm_page_free", 0x10),  # current kernels: free, then batched
            ev(1.1, "mm_page_free_batched", 0x10),
            ev(1.2, "mm_page_free_batched", 0x20),  # 3.3-4.13: batched, then free
            ev(1.3, "mm_page_free", 0x20),
            ev(1.4, "mm_page_free_batched", 0x30),  # its mm_page_free filtered out
        ]
    )
    t = parse_trace(write(tmp_path, text))
    assert list(t.pfns) == [0x10, 0x20, 0x30] and list(t.kinds) == [FREE] * 3
    assert t.batched_duplicates == 2 and not t.batched_only


def test_integer_timestamps_are_not_seconds(tmp_path: Path) -> None:
    line = "  a-1 [000] ..... 123456789: mm_page_free: page=0 pfn=0x10 order=0\n"
    assert not parse_trace(write(tmp_path, line)).seconds_clock


def test_a_gzip_file_with_damaged_data_is_a_trace_error(tmp_path: Path) -> None:
    data = bytearray(gzip.compress((ALLOC_HEX * 400).encode(), mtime=0))
    for i in range(20, 60):  # the deflate stream itself: zlib.error, not EOFError
        data[i] ^= 0xFF
    damaged = tmp_path / "damaged.gz"
    damaged.write_bytes(bytes(data))
    with pytest.raises(TraceError, match=r"damaged\.gz: cannot read past line \d+: Error -3"):
        parse_trace(str(damaged))
