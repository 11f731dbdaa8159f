"""pagehint sweep end to end: a small grid, files and plots, Ctrl-C keeps results."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from lab.plot import plots_available
from tests.integration.procs import PAGEHINT, run_cli, wait_until

ROOT = Path(__file__).resolve().parents[2]
IDLE = ROOT / "examples" / "policies" / "idle.py"


def test_a_small_grid_writes_its_table_files_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    r = run_cli(
        [
            "sweep",
            "--workload",
            "memhog",
            "--ram",
            "128MiB",
            "--duration",
            "5",
            "--set",
            f"policy=reporting,{IDLE}:IdlePolicy",
            "--set",
            "delay=0.5",
            "--out",
            str(out),
        ],
        timeout=240,
    )
    assert r.returncode == 0, r.stderr
    assert "saved GiB·s" in r.stdout and "Pareto front" in r.stdout
    assert r.stderr.count(": done\n") == 3  # progress: baseline + two combinations
    report = json.loads((out / "sweep.json").read_text())
    assert report["runs_done"] == report["runs_planned"] == 3 and not report["interrupted"]
    by = {row["policy"]: row for row in report["results"]}
    assert set(by) == {"reporting", f"{IDLE}:IdlePolicy"}
    for row in by.values():
        assert row["saved_gib_s"] > 0 and row["chains"] > 0 and row["data_loss_pages"] == 0
    assert report["pareto"]
    csv = (out / "sweep.csv").read_text().splitlines()
    assert csv[0].startswith("combination,runs,saved_gib_s") and len(csv) == 3
    if plots_available():
        assert (out / "resident.png").stat().st_size > 0
        assert (out / "tradeoff.png").stat().st_size > 0


def test_ctrl_c_stops_every_process_and_keeps_what_finished(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    p = subprocess.Popen(
        [
            *PAGEHINT,
            "sweep",
            "--workload",
            "memhog",
            "--ram",
            "128MiB",
            "--duration",
            "3",
            "--set",
            "delay=0.5,1,2,3",
            "--parallel",
            "1",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The first run finished and the second is writing its timeline: interrupt now.
        wait_until(lambda: (out / "run001.timeline.jsonl").exists(), 60, "the second run")
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, stderr
    report = json.loads((out / "sweep.json").read_text())
    assert report["interrupted"] and 1 <= report["runs_done"] < report["runs_planned"] == 5
    assert "interrupted" in stdout
    # no pagehint process of this sweep is left
    left = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout
    assert left.strip() == ""


def test_a_failing_guest_is_reported_and_the_rest_go_on(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from guest.hinting.base import Policy\n"
        "class Raises(Policy):\n"
        "    def start(self): raise RuntimeError('no')\n"
        "    async def stop(self): pass\n"
        "    def idle(self): return True\n"
    )
    out = tmp_path / "sweep"
    r = run_cli(
        [
            "sweep", "--workload", "memhog", "--ram", "128MiB", "--duration", "2",
            "--set", f"policy={bad}:Raises,bitmap", "--out", str(out),
        ],
        timeout=240,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    report = json.loads((out / "sweep.json").read_text())
    assert report["runs_done"] == 3 and len(report["runs_failed"]) == 1
    assert "broke the rules" in report["runs_failed"][0]["error"]
    by = {row["policy"]: row for row in report["results"]}
    assert by["bitmap"]["runs"] == 1 and by["bitmap"]["saved_gib_s"] is not None
    assert "failed:" in r.stdout
