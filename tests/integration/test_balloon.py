"""The balloon end to end on real memory: a `pagehint host --backend shm`, a
guest process, and `pagehint balloon` setting its target from outside. The
host's resident memory falls by the target as the balloon fills and rises
again once the guest uses its pages; the guest's stamps see no loss."""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from tests.integration.procs import Procs, run_cli, wait_until
from virtqueue import codec

MIB = 1 << 20
HELD = 448 * MIB
TARGET = 256 * MIB

SCENARIO = """
[[steps]]
op = "alloc"
name = "a"
size = "448MiB"
[[steps]]
op = "free"
name = "a"
[[steps]]
op = "mark"
label = "freed"
[[steps]]
op = "sleep"
seconds = 12
[[steps]]
op = "alloc"
name = "b"
size = "448MiB"
[[steps]]
op = "sleep"
seconds = 2
"""


def _resident(addr: str) -> int:
    with grpc.insecure_channel(addr) as ch:
        h = codec.decode_host_stats(codec.stub(ch).Stats(codec.encode_stats_request(), timeout=5))
    return sum(g.resident_bytes for g in h.guests)


def _balloon(addr: str, *args: str) -> dict[str, object]:
    r = run_cli(["balloon", "--host", addr, "--guest", "g1", "--json", *args])
    assert r.returncode == 0, r.stderr
    out: dict[str, object] = json.loads(r.stdout)
    return out


def test_inflate_to_a_target_and_back_moves_the_hosts_memory_by_it(
    procs: Procs, tmp_path: Path
) -> None:
    scenario = tmp_path / "hold.toml"
    scenario.write_text(SCENARIO)
    addr, _ = procs.host("--backend", "shm")
    guest = procs.guest(
        "--host", addr, "--id", "g1", "--ram", "512MiB", "--policy", "none",
        "--scenario", str(scenario), "--json",
    )  # fmt: skip
    # freed but not reported (policy none): the host still holds every page
    wait_until(lambda: _resident(addr) >= HELD, 20, "the guest's pages resident")
    before = _resident(addr)
    # The guest's stats queue starts at a random phase of its 1 s period: wait for it.
    wait_until(lambda: bool(_balloon(addr)["stats"]), 10, "the guest's first stats")
    status = _balloon(addr, "--target", "256MiB")
    assert status["target_bytes"] == TARGET and status["stats"]
    wait_until(lambda: _balloon(addr)["actual_bytes"] == TARGET, 10, "the balloon full")
    fallen = before - _resident(addr)
    assert abs(fallen - TARGET) <= 0.02 * TARGET, (before, fallen)
    _balloon(addr, "--target", "0")
    wait_until(lambda: _balloon(addr)["actual_bytes"] == 0, 10, "the balloon empty")
    # the guest uses its pages again: the host holds them again
    wait_until(lambda: _resident(addr) >= before - 0.02 * TARGET, 30, "the pages back")
    s = procs.finish(guest)
    assert s["data_loss_checked"] and s["data_loss_pages"] == 0
    assert s["balloon_inflated_bytes"] == TARGET and s["balloon_target_bytes"] == 0


def test_a_bad_balloon_call_is_one_line_and_exit_2(procs: Procs) -> None:
    addr, _ = procs.host()
    for args, needle in (
        (["--guest", "nobody"], "NOT_FOUND"),
        (["--guest", "g", "--target", "lots"], "--target"),
        ([], "give --guest"),
    ):
        r = run_cli(["balloon", "--host", addr, *args])
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert needle in r.stderr
