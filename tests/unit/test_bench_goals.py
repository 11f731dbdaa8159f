"""`make bench`'s goals and the generated tables (bench/goals.py, bench/report.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report, run_all
from bench.goals import Goal


def test_a_ratio_goal_is_judged_on_the_median() -> None:
    g = Goal("wire", (0.5, 0.95, 0.92), 0.9)
    assert g.verdict() == "met"
    assert "0.92 (0.50–0.95, 3 rounds)" in g.line()
    assert Goal("wire", (0.5, 0.6, 0.95), 0.9).verdict() == "NOT met"


def test_a_latency_goal_for_every_round_fails_on_one_bad_round() -> None:
    assert (
        Goal("p99", (20.0, 30.0, 40.0), 50.0, unit="ms", at_most=True, every_round=True).verdict()
        == "met"
    )
    g = Goal("p99", (20.0, 30.0, 51.0), 50.0, unit="ms", at_most=True, every_round=True)
    assert g.verdict() == "NOT met"  # the median (30) alone would pass


def test_a_band_goal_needs_every_run_within() -> None:
    assert Goal("fid", (0.97, 1.04), 0.05, band=True).verdict() == "met"
    assert Goal("fid", (0.97, 1.06), 0.05, band=True).verdict() == "NOT met"


def test_no_samples_is_not_measured_and_no_target_is_reported() -> None:
    assert Goal("x", (), 1.0).verdict() == "NOT measured"
    assert Goal("x", (1.0,), None).verdict() == "reported"


def test_a_goal_survives_json() -> None:
    g = Goal("p99", (20.0, 51.0), 50.0, unit="ms", at_most=True, every_round=True, note="n")
    back = Goal.from_json(json.loads(json.dumps(g.as_json())))
    assert back == g


def test_render_rewrites_only_the_marked_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "typed 1.23\n<!-- bench:goals -->\nold figure\n<!-- /bench -->\n"
        "<!-- bench:bench_nonesuch -->\nkept\n<!-- /bench -->\n"
    )
    monkeypatch.setattr(report, "DOCS", (doc,))
    data = {
        "bench_discard": {
            "date": "2026-12-04 10:00 UTC",
            "commit": "abc1234",
            "python": "3.11",
            "result": {"ratios": [0.4, 0.6], "host_gib_s": 1.0, "raw_gib_s": 2.0},
            "goals": [Goal("as recorded", (0.4, 0.6), 0.9).as_json()],
        }
    }
    assert report.render(data) == [doc]
    text = doc.read_text()
    assert text.startswith("typed 1.23\n")
    assert "old figure" not in text
    assert (
        # Judged by the bench's goals() of today, from the recorded figures.
        "| host discard (checks + punch), order-9 chains, vs raw punch-hole — 1.0 vs 2.0 GiB/s "
        "| 0.50 (0.40–0.60, 2 rounds) | ≥ 0.80 | **NOT met** "
        "| `bench_discard` 2026-12-04 abc1234 |" in text
    )
    assert "kept" in text  # a bench never run here keeps what it had


def test_the_docs_carry_the_generated_goals_table() -> None:
    for doc in report.DOCS:
        assert "<!-- bench:goals -->" in doc.read_text(), doc


def test_every_bench_has_goals() -> None:
    import importlib

    for name in run_all.available():
        assert hasattr(importlib.import_module(f"bench.{name}"), "goals"), name


def test_an_unknown_bench_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        run_all.main(["--only", "nonesuch"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and "no bench bench_nonesuch" in err[0]


@pytest.mark.parametrize("content", ["{not json", '{"bench_x": [1, 2]}', "[]"])
def test_a_bad_results_file_is_one_line_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    bad = tmp_path / "results.json"
    bad.write_text(content)
    monkeypatch.setattr(report, "RESULTS", bad)
    ran: list[str] = []
    monkeypatch.setattr(run_all.importlib, "import_module", lambda name: ran.append(name))
    with pytest.raises(SystemExit) as e:
        run_all.main(["--only", "discard"])
    assert str(e.value).startswith("error: ") and "\n" not in str(e.value)
    assert ran == [] and bad.read_text() == content  # nothing run, nothing lost
