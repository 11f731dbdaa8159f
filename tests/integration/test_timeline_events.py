"""Timelines true to the event: rows at every acknowledgement, checked against the host."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pagehint.schema import ReportRecord, TimelineRow, field_names, read_lines
from tests.integration.procs import Procs

MEMHOG = Path(__file__).resolve().parents[2] / "guest" / "workloads" / "scenarios" / "memhog.toml"


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def run(
    procs: Procs, tmp: Path, backend: str
) -> tuple[list[TimelineRow], list[ReportRecord], list[dict[str, Any]]]:
    chain_log = tmp / f"{backend}.chains.jsonl"
    addr, host = procs.host("--backend", backend, "--chain-log", str(chain_log))
    tl, reports = tmp / f"{backend}.timeline.jsonl", tmp / f"{backend}.reports.jsonl"
    s = procs.finish(
        procs.guest("--host", addr, "--ram", "512MiB", "--policy", "reporting",
                    "--scenario", str(MEMHOG), "--duration", "6", "--timeline", str(tl),
                    "--reports", str(reports), "--id", backend)
    )  # fmt: skip
    assert s["reported_bytes"] > 0
    procs.group.stop(host)  # SIGTERM: the host closes its chain log
    # The guest's own records through the schema's decoder (it checks their fields).
    rows, records = read_lines(TimelineRow, tl), read_lines(ReportRecord, reports)
    names = set(field_names(TimelineRow))
    assert all(set(r) <= names for r in rows)
    return rows, records, lines(chain_log)


def test_the_first_drop_appears_with_its_acknowledgement_not_a_period_later(
    procs: Procs, tmp_path: Path
) -> None:
    rows, reports, _ = run(procs, tmp_path, "shm")
    t_free = next(r["t"] for r in rows if r.get("mark") == "free")
    before = max(r["host_resident_bytes"] for r in rows if r["t"] <= t_free)
    first_ack = next(c for c in reports if c["t_answered"] > t_free and c["status"] == "done")
    first_drop = next(
        r for r in rows if r["t"] > t_free and r["host_resident_bytes"] < before - (1 << 20)
    )
    # Usually the ack's own row; with shm a periodic row read between the host's
    # discard and the answer's arrival may show it first (the kernel's count is
    # read at that moment). Either way it lies in the chain's flight: not before
    # the chain was sent, and not a sampling period (100 ms) after its answer —
    # the ack row is written at most 10 ms after it; 50 ms leaves room for a
    # loaded machine's scheduling without letting a periodic row pass for it.
    assert first_drop["event"] in ("ack", "sample"), first_drop
    assert first_ack["t_sent"] <= first_drop["t"], (first_drop, first_ack)
    assert first_drop["t"] - first_ack["t_answered"] <= 0.050, (first_drop, first_ack)


def test_every_ack_row_matches_the_hosts_own_record(procs: Procs, tmp_path: Path) -> None:
    rows, reports, chains = run(procs, tmp_path, "sim")
    host = {c["chain"]: c for c in chains if c["guest"] == "sim"}
    acks = [r for r in rows if r["event"] == "ack"]
    # one row per acknowledgement (acks under 10 ms apart share a row)
    assert 0 < len(acks) <= sum(1 for c in reports if c["status"] == "done")
    for r in acks:
        # The row's host figure is the host's figure right after that very chain.
        assert r["host_resident_bytes"] == host[r["chain"]]["resident_bytes"], r
    for c in reports:
        assert c["host_resident_bytes"] == host[c["chain"]]["resident_bytes"]
        assert c["t_sent"] <= c["t_answered"] and c["bytes"] > 0 and c["ranges"]
    events = {r["event"] for r in rows}
    assert {"sample", "mark", "ack", "end"} <= events
    assert [r["t"] for r in rows] == sorted(r["t"] for r in rows), "rows in time order"


def test_logs_that_cannot_be_written_cost_nothing_but_themselves(procs: Procs) -> None:
    # /dev/full: every write fails with ENOSPC. The run goes on, every block goes
    # back, the summary says what was lost.
    addr, _ = procs.host("--chain-log", "/dev/full")
    s = procs.finish(
        procs.guest("--host", addr, "--ram", "256MiB", "--policy", "reporting", "--delay", "0",
                    "--workload", "churn", "--hinting-order", "0", "--duration", "3",
                    "--reports", "/dev/full", "--timeline", "/dev/full", "--check")
    )  # fmt: skip
    assert s["isolated_bytes"] == 0 and s["abandoned_reports"] == 0
    assert s["invariants"] == "ok" and s["reported_bytes"] > 0
    assert s["report_failures_by_reason"].get("internal", 0) == 0 and s["host_connects"] == 1
    assert s["timeline_error"]
    assert "cannot write" in s["_stderr"]
