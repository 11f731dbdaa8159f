"""Plots are optional (the lab extra): without matplotlib the files say so."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import plot
from lab.plot import PLOTS_MISSING, files_line, plot_files, plot_series, plot_tradeoff


def test_files_name_the_plot_or_why_it_is_missing(tmp_path: Path) -> None:
    files = plot_files(tmp_path, "timeline.jsonl", tmp_path / "timeline.png")
    assert files == {
        "summary": str(tmp_path / "summary.json"),
        "timeline": str(tmp_path / "timeline.jsonl"),
        "plot": str(tmp_path / "timeline.png"),
    }
    assert files_line(files) == f"wrote {tmp_path}/summary.json, timeline.jsonl, timeline.png"
    missing = plot_files(tmp_path, None, None)
    assert missing["plot_skipped"] == PLOTS_MISSING
    assert files_line(missing).endswith("\n" + PLOTS_MISSING)


def test_without_matplotlib_nothing_is_drawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plot, "plots_available", lambda: False)
    rows = [{"t": 0.0, "host_resident_bytes": 1 << 20}]
    assert plot_series({"a": rows}, tmp_path / "a.png", "t") is None
    assert (
        plot_tradeoff([{"chains": 1, "saved_gib_s": 1.0, "combination": "x"}], tmp_path / "b.png")
        is None
    )
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not plot.plots_available(), reason="matplotlib (the lab extra) not installed")
def test_with_matplotlib_the_pngs_are_written(tmp_path: Path) -> None:
    rows = [
        {"t": 0.0, "host_resident_bytes": 1 << 20},
        {"t": 1.0, "mark": "free", "host_resident_bytes": 0},
    ]
    assert (
        plot_series({"a": rows, "b": rows}, tmp_path / "a.png", "t", total=True)
        == tmp_path / "a.png"
    )
    pts = [
        {"chains": 1, "saved_gib_s": 1.0, "combination": "x"},
        {"chains": 2, "saved_gib_s": 0.5, "combination": "y"},
    ]
    assert plot_tradeoff(pts, tmp_path / "b.png") == tmp_path / "b.png"
    assert (tmp_path / "a.png").stat().st_size > 1000 and (tmp_path / "b.png").stat().st_size > 1000
