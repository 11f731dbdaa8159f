"""The guest's summary as a table: every row a user reads, and the optional ones."""

from __future__ import annotations

from typing import Any

from guest.report import format_summary
from pagehint.schema import GuestSummary
from tests.records import guest_summary


def summary(**extra: Any) -> GuestSummary:
    # shm: real guest memory, so data loss was measured
    return guest_summary(**{"backend": "shm", "data_loss_checked": True, **extra})


def test_the_rows_a_user_reads() -> None:
    text = format_summary(summary())
    assert "g1 (1.0 GiB RAM, policy reporting, backend shm)" in text
    assert "3.0 MiB in 2 chains (0 failed)" in text
    assert "p50 0.500 ms, p99 2.000 ms" in text
    assert "data loss         0 pages" in text
    assert "POLICY BROKE RULES" not in text and "trace" not in text


def test_policy_errors_and_a_trace_show() -> None:
    trace = {
        "replayed": 10, "events": 10, "allocs": 6, "frees": 4, "seconds": 0.01,
        "speed": None, "events_per_s": 1000, "pfn_range": ["0x10", "0x20"],
        "mapping": "compact", "initially_allocated_pages": 1,
        "inconsistencies": {"outside_ram": 6}, "substituted": 0,
        "untouched_allocated_pages": 0, "batched_only": True, "failed_allocs_in_trace": 1,
        "lost_events": 0, "lost_markers": 0, "batched_duplicates": 0, "malformed_lines": 0,
        "skipped_events": {"kmalloc": 3},
    }  # fmt: skip
    text = format_summary(summary(policy_errors=["hook raised"], trace=trace))
    assert "POLICY BROKE RULES  hook raised" in text
    assert "10 of 10 events (6 allocs, 4 frees)" in text and "as fast as possible" in text
    assert "6 of 10 events fell outside RAM" in text
    assert "mm_page_free_batched" in text
    assert "1 failed allocations, 3 other events" in text
    assert "blocks it touches" not in text  # a summary from before block_fill
    for untouched in ({"untouched_reported_pages": 9}, {}):  # reported, free
        low = format_summary(summary(trace=dict(trace, **untouched, block_fill=0.08)))
        assert "; 8.0% of the pages of the 4 MiB blocks it touches" in low
        assert "names 8.0% of the pages" in low and "--trace-untouched allocated" in low
    held = dict(trace, untouched_allocated_pages=9, block_fill=0.08)
    assert "names 8.0%" not in format_summary(summary(trace=held))


def test_the_host_memory_figures_show_only_when_the_host_said_something() -> None:
    from guest.report import format_summary
    from tests.records import guest_summary

    quiet = format_summary(guest_summary(backend="sim"))
    assert "host faults" not in quiet and "KILLED" not in quiet
    said = format_summary(
        guest_summary(
            backend="sim",
            major_faults=512,
            minor_faults=3,
            fault_wait_seconds=0.044,
            swapped_bytes=2 << 20,
            oom_killed=True,
        )
    )
    assert "512 major (swapped in), 3 minor; the workload waited 0.044 s" in said
    assert "KILLED" in said and "exit status 3" in said
