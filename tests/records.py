"""Complete records of pagehint.schema's kinds for unit tests, any field overridable.

Complete because the readers index every field the schema says is there: a
test's partial dict would hide a reader that a real summary breaks.
"""

from __future__ import annotations

from typing import Any, cast

from pagehint.schema import GuestSummary, TimelineRow


def guest_summary(**fields: Any) -> GuestSummary:
    s: dict[str, Any] = {
        "guest_id": "g1",
        "policy": "reporting",
        "ram_bytes": 1 << 30,
        "duration_s": 1.0,
        "reported_bytes": 3 << 20,
        "reported_blocks": 3,
        "chains": 2,
        "report_failures": 0,
        "report_failures_by_reason": {},
        "isolation_refused": 0,
        "abandoned_reports": 0,
        "abandoned_bytes": 0,
        "stale_bits": 0,
        "walks": 1,
        "isolated_peak_bytes": 128 << 20,
        "worker_seconds": 0.01,
        "free_bytes": 512 << 20,
        "reportable_free_bytes": 256 << 20,
        "host_resident_bytes": 100 << 20,
        "ack_latency_ms": {"p50": 0.5, "p99": 2.0, "max": 3.0},
        "alloc_ops": 10,
        "alloc_failures": 0,
        "alloc_latency_ms": {"p50": 0.001, "p99": 0.002, "max": 0.003},
        "data_loss_pages": 0,
        "data_loss_checked": False,
        "stopped_by_signal": False,
        "isolated_bytes": 0,
        "allocated_bytes": 0,
        "invariants": "ok",
        "marks": [],
        "timeline_error": None,
        "policy_errors": [],
        "trace": None,
    }
    s.update(fields)
    return cast(GuestSummary, s)


def timeline_row(t: float, resident: int | None, **fields: Any) -> TimelineRow:
    row: dict[str, Any] = {
        "t": t,
        "event": "sample",
        "free_bytes": 0,
        "isolated_bytes": 0,
        "allocated_bytes": 0,
        "reported_bytes": 0,
        "host_resident_bytes": resident,
    }
    row.update(fields)
    return cast(TimelineRow, row)
