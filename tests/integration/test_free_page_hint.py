"""Free page hinting with real processes: `pagehint hint` starts, reads and stops
runs as Firecracker's API does; a churning guest on real memory (shm) keeps
every stamp while reporting and hinting run side by side; bad calls are one line."""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from tests.integration.procs import Procs, run_cli, wait_until
from virtqueue import codec

MIB = 1 << 20


def _hint(addr: str, action: str, *more: str) -> dict[str, object]:
    r = run_cli(["hint", action, "--host", addr, "--guest", "g1", "--json", *more])
    assert r.returncode == 0, r.stderr
    out: dict[str, object] = json.loads(r.stdout)
    return out


def _reported(addr: str) -> int:
    with grpc.insecure_channel(addr) as ch:
        h = codec.decode_host_stats(codec.stub(ch).Stats(codec.encode_stats_request(), timeout=5))
    return sum(g.reported_bytes for g in h.guests)


def _ready(addr: str) -> bool:
    return run_cli(["hint", "status", "--host", addr, "--guest", "g1"]).returncode == 0


def test_reporting_and_hinting_side_by_side_lose_nothing_on_real_memory(
    procs: Procs, tmp_path: Path
) -> None:
    shm = tmp_path / "shm"
    addr, _ = procs.host("--backend", "shm", "--shm-dir", str(shm), "--free-page-hint")
    guest = procs.guest(
        "--host", addr, "--shm-dir", str(shm), "--id", "g1", "--ram", "512MiB",
        "--policy", "reporting", "--workload", "churn", "--duration", "120", "--check",
    )  # fmt: skip
    wait_until(lambda: _ready(addr), 20, "the guest's session")
    # Reporting's first pass first (its delay is 2 s): then hint runs beside it.
    wait_until(lambda: _reported(addr) > 0, 30, "the guest's first report")
    runs = 0
    for _ in range(3):  # runs while the guest churns and reports
        status = _hint(addr, "start", "--no-ack-on-stop")
        runs += 1
        assert status["host_cmd"] >= 2
        wait_until(lambda: _hint(addr, "status")["guest_cmd"] == 0, 10, "the guest's STOP")
        assert _hint(addr, "status")["hinted_bytes"] > 0
        assert _hint(addr, "stop")["host_cmd"] == 1  # DONE
    guest.terminate()  # ends cleanly: its summary, its final page check
    s = procs.finish(guest)
    assert s["data_loss_checked"] and s["data_loss_pages"] == 0
    assert s["free_page_hint_runs"] == runs and s["free_page_hinted_bytes"] > 0
    assert s["reported_bytes"] > 0 and s["host_refused_chains"] == 0


def test_bad_hint_calls_are_one_line_and_exit_2(procs: Procs) -> None:
    addr, _ = procs.host()  # no --free-page-hint
    guest = procs.guest("--host", addr, "--id", "g1", "--ram", "128MiB", "--duration", "20")
    wait_until(
        lambda: (
            "FAILED_PRECONDITION"
            in run_cli(["hint", "status", "--host", addr, "--guest", "g1"]).stderr
        ),
        20,
        "the guest's session",
    )
    for args, needle in (
        (["status", "--guest", "g1"], "--free-page-hint"),
        (["start", "--guest", "nobody"], "NOT_FOUND"),
        (["bogus", "--guest", "g1"], "unknown action"),
        (["status"], "give --guest"),
        (["status", "--guest", "g1", "--timeout", "-1"], "--timeout"),
    ):
        r = run_cli(["hint", *args[:1], "--host", addr, *args[1:]])
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert needle in r.stderr
    guest.terminate()
