"""Live progress: the last complete timeline row of each guest, at most every period."""

from __future__ import annotations

import io
import json
from pathlib import Path

from lab.live import Ticker, last_row, progress_line
from tests.records import timeline_row


def row(**kw: object) -> str:
    base = {"free_bytes": 1 << 20, "isolated_bytes": 0, "reported_bytes": 2 << 20}
    return json.dumps(dict(timeline_row(0, None, **base), **kw)) + "\n"


def test_the_last_complete_row_even_with_a_half_written_one(tmp_path: Path) -> None:
    p = tmp_path / "g.timeline.jsonl"
    p.write_text(row(t=1) + row(t=2) + '{"t": 3, "free_')
    got = last_row(p)
    assert got is not None and got["t"] == 2
    # A line that is JSON but not a timeline row is skipped too, not shown as one.
    p.write_text(row(t=1) + '{"t": 2}\n')
    got = last_row(p)
    assert got is not None and got["t"] == 1
    assert last_row(tmp_path / "missing") is None


def test_progress_line_names_every_guest(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    p.write_text(row(host_resident_bytes=3 << 20))
    line = progress_line(1.25, {"a": p, "b": tmp_path / "none"})
    assert line.startswith("[  1.2s] ") or line.startswith("[  1.3s] ")
    assert "a: free 1.0 MiB, isolated 0 B, reported 2.0 MiB, host 3.0 MiB" in line
    assert "b: starting" in line


def test_ticker_prints_at_most_once_per_period() -> None:
    out = io.StringIO()
    t = Ticker(out, period=3600)
    t.maybe(lambda: "one")
    t.maybe(lambda: "two")
    assert out.getvalue() == "one\n"
