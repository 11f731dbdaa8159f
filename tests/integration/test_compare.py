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
