"""The lab's shared pipeline: a guest's figures from its timeline, the published files."""

from __future__ import annotations

import json
from pathlib import Path

from lab.pipeline import publish_timelines, with_figures, write_report
from pagehint.schema import TimelineRow, read_lines
from tests.records import guest_summary, timeline_row

MIB = 1 << 20


def test_a_summary_gains_what_its_timeline_shows() -> None:
    rows = [
        timeline_row(0.0, 10 * MIB),
        timeline_row(1.0, 10 * MIB, event="mark", mark="free"),
        timeline_row(1.5, 5 * MIB, event="ack", chain=1),
        timeline_row(2.0, 0, event="ack", chain=2),
    ]
    s = with_figures(guest_summary(), rows)
    assert s["host_resident_peak_bytes"] == 10 * MIB
    [drop] = s["drops"]
    assert drop["mark"] == "free" and drop["drop_bytes"] == 10 * MIB
    assert drop["t50_s"] == 0.5 and drop["t90_s"] == 1.0


def test_published_timelines_carry_their_labels(tmp_path: Path) -> None:
    rows = {"a": [timeline_row(0.0, MIB)], "b": [timeline_row(0.0, 2 * MIB)]}
    files = publish_timelines(tmp_path, rows, lambda n: {"guest": n}, title="t")
    assert files["timeline"] == str(tmp_path / "timeline.jsonl")
    got = read_lines(TimelineRow, tmp_path / "timeline.jsonl")
    assert [(dict(r).get("guest"), r["host_resident_bytes"]) for r in got] == [
        ("a", MIB),
        ("b", 2 * MIB),
    ]
    assert "plot" in files or "plot_skipped" in files
    write_report(tmp_path, {"files": files})
    assert json.loads((tmp_path / "summary.json").read_text())["files"] == files
