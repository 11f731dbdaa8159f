"""`pagehint compare` end to end: real host, one guest per policy."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from tests.integration.procs import run_cli

SHORT = Path(__file__).resolve().parent / "scenarios" / "short.toml"


def test_compare_writes_json_timeline_and_png(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    r = run_cli(
        ["compare", "--ram", "256MiB", "--scenario", str(SHORT), "--out", str(out), "--json"],
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report == json.loads((out / "summary.json").read_text())
    res = report["results"]
    assert set(res) == {"bitmap", "reporting", "none"}
    assert res["none"]["reported_bytes"] == 0
    for pol in ("bitmap", "reporting"):
        s = res[pol]
        assert s["reported_bytes"] >= 60 << 20, (pol, s["reported_bytes"])
        assert s["host_reported_bytes"] == s["reported_bytes"]
        drop = next(d for d in s["drops"] if d["mark"] == "free")
        assert drop["drop_bytes"] >= 0.9 * (64 << 20)
        assert drop["t50_s"] is not None and drop["t90_s"] >= drop["t50_s"]
    # reporting waits its 2 s delay; the bitmap worker wakes at once (16 new bits)
    assert res["reporting"]["drops"][0]["t90_s"] > res["bitmap"]["drops"][0]["t90_s"]
    assert res["none"]["host_resident_bytes"] >= 64 << 20
    rows = [json.loads(x) for x in (out / "timeline.jsonl").read_text().splitlines()]
    assert {r["policy"] for r in rows} == {"bitmap", "reporting", "none"}
    with Image.open(out / "timeline.png") as im:
        im.verify()
    with Image.open(out / "timeline.png") as im:
        assert im.format == "PNG" and im.size[0] >= 600


def test_compare_bad_input() -> None:
    r = run_cli(["compare", "--policies", "bitmap,psychic"])
    assert r.returncode == 2 and "--policies: unknown value 'psychic'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_compare_takes_a_policy_of_your_own(tmp_path: Path) -> None:
    idle = Path(__file__).resolve().parents[2] / "examples" / "policies" / "idle.py"
    out = tmp_path / "cmp"
    r = run_cli(
        [
            "compare",
            "--ram",
            "256MiB",
            "--scenario",
            str(SHORT),
            "--out",
            str(out),
            "--policies",
            f"reporting,{idle}:IdlePolicy",
            "--json",
        ],
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["results"]
    mine = res[f"{idle}:IdlePolicy"]
    assert mine["reported_bytes"] > 0 and mine["policy_errors"] == []
    assert mine["host_reported_bytes"] == mine["reported_bytes"]


def test_compare_with_host_memory_shows_what_the_hosts_memory_cost(tmp_path: Path) -> None:
    """A guest whose scenario needs more than the host's 96 MiB (less the VMM's 72):
    the host swaps, the guest takes major faults and waits for them, and the table
    says so."""
    again = tmp_path / "again.toml"  # what was swapped out is used again: major faults
    again.write_text(
        '[[steps]]\nop = "alloc"\nname = "a"\nsize = "64MiB"\n'
        '[[steps]]\nop = "free"\nname = "a"\n'
        '[[steps]]\nop = "alloc"\nname = "b"\nsize = "64MiB"\n'
        '[[steps]]\nop = "sleep"\nseconds = 1\n'
    )
    out = tmp_path / "cmp"
    r = run_cli(
        ["compare", "--ram", "256MiB", "--scenario", str(again), "--policies", "none",
         "--host-memory", "96MiB", "--swap", "512MiB", "--out", str(out)],
        timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "major faults" in r.stdout and "in swap" in r.stdout
    s = json.loads((out / "summary.json").read_text())["results"]["none"]
    assert s["major_faults"] > 0 and s["fault_wait_seconds"] > 0
    assert s["oom_killed"] is False
    r = run_cli(["compare", "--host", "127.0.0.1:1", "--host-memory", "1GiB"])
    assert r.returncode == 2 and "not --host" in r.stderr
