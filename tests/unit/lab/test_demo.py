"""The demo's table and last lines: data loss is measured only with real memory."""

from __future__ import annotations

from lab.demo import DemoReport, format_demo
from tests.records import guest_summary


def report(backend: str, checked: bool) -> DemoReport:
    guests = {
        f"guest-{i}": guest_summary(
            guest_id=f"guest-{i}", backend=backend, data_loss_checked=checked
        )
        for i in (1, 2)
    }
    return {
        "backend": backend,
        "guests": guests,
        "host_resident_end_bytes": 0,
        "data_loss_pages": 0,
        "data_loss_checked": checked,
        "elapsed_s": 1.0,
        "files": {"summary": "runs/x/summary.json"},
    }


def test_with_sim_data_loss_is_not_measured() -> None:
    text = format_demo(report("sim", False))
    assert "0 pages" not in text
    assert "data loss: not measured (sim backend has no real memory; use --backend shm)" in text
    rows = [line for line in text.splitlines() if line.startswith("guest-")]
    assert len(rows) == 2 and all(line.rstrip().endswith("not measured") for line in rows)


def test_with_shm_data_loss_is_counted() -> None:
    text = format_demo(report("shm", True))
    assert "data loss: 0 pages (shm backend)" in text
    rows = [line for line in text.splitlines() if line.startswith("guest-")]
    assert all(line.rstrip().endswith(" 0") for line in rows)
