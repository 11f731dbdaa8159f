"""The summary says "data loss: not measured" where nothing could measure it."""

from __future__ import annotations

import pytest

from guest.report import format_summary
from tests.records import guest_summary


def data_loss_row(text: str) -> str:
    (row,) = [line for line in text.splitlines() if line.startswith("data loss")]
    return row


@pytest.mark.parametrize("backend", ["loopback", "sim"])
def test_no_real_memory_is_not_measured_rather_than_zero(backend: str) -> None:
    row = data_loss_row(format_summary(guest_summary(backend=backend, data_loss_checked=False)))
    assert "not measured" in row and f"{backend} backend" in row and "--backend shm" in row
    assert "0 pages" not in row


def test_real_memory_is_counted() -> None:
    s = guest_summary(backend="shm", data_loss_checked=True, data_loss_pages=3)
    assert data_loss_row(format_summary(s)).endswith("  3 pages")
