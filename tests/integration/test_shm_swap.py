"""Real swap on the shm backend: a real `pagehint host --backend shm --host-memory
--swap` and real guests whose allocations, out of step, push each other's pages
into the host's swap file and back. The guests' stamps prove the bytes came back
(``data_loss_pages == 0``); the host's figures prove swap was used; and with swap
full the OOM killer's victim exits 3 while the other loses nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc.aio

from tests.integration.procs import Procs, run_cli, wait_until
from virtqueue import codec

MIB = 1 << 20


def phases(tmp: Path, name: str, lead: float, size: str, count: int, hold: float) -> str:
    """``lead`` seconds of quiet, then ``count`` times: allocate, hold, free, rest."""
    path = tmp / f"{name}.toml"
    path.write_text(
        f'[[steps]]\nop = "sleep"\nseconds = {lead}\n'
        f'[[steps]]\nop = "repeat"\ncount = {count}\n'
        f'[[steps.steps]]\nop = "alloc"\nname = "hog"\nsize = "{size}"\n'
        f'[[steps.steps]]\nop = "sleep"\nseconds = {hold}\n'
        f'[[steps.steps]]\nop = "free"\nname = "hog"\n'
        f'[[steps.steps]]\nop = "sleep"\nseconds = {hold}\n'
    )
    return str(path)


async def _host_stats(addr: str) -> codec.HostFigures:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = codec.aio_stub(channel)
        return codec.decode_host_stats(await stub.Stats(codec.encode_stats_request(), timeout=5))


def test_guests_out_of_step_swap_each_other_and_lose_nothing(procs: Procs, tmp_path: Path) -> None:
    shm = procs.group.workdir / "shm"
    swap = tmp_path / "swap"
    addr, _ = procs.host(
        "--backend",
        "shm",
        "--shm-dir",
        str(shm),
        "--swap-dir",
        str(swap),
        "--host-memory",
        "64MiB",
        "--swap",
        "96MiB",
        "--vmm-overhead",
        "0",
        # A guest whose Close the host never heard (its 0.5 s ran out on a loaded
        # machine, or it was between connections) leaves its session, and the
        # session's swap, until the session times out: bound that inside the wait.
        "--session-timeout",
        "5",
    )
    guests = [
        procs.guest(
            "--host",
            addr,
            "--shm-dir",
            str(shm),
            "--id",
            name,
            "--ram",
            "64MiB",
            "--scenario",
            phases(tmp_path, name, lead, "40MiB", 3, 1.2),
            "--duration",
            "9",
            "--check",
        )
        for name, lead in (("a", 0.0), ("b", 0.6), ("c", 1.2))
    ]
    summaries = [procs.finish(g, timeout=90) for g in guests]
    stats = asyncio.run(_host_stats(addr))
    for s in summaries:
        assert s["data_loss_pages"] == 0, s["_stderr"]
        assert s["pages_checked"] > 0 and not s.get("oom_killed")
    assert stats.swap_outs > 0 and stats.swap_ins > 0, stats
    assert sum(s["major_faults"] for s in summaries) > 0
    # Every session's swap is given back once it ends; the last may still be ending
    # (its guest's Close waits at most 0.5 s, the host copies its swap back first),
    # or, if its Close was lost, ends when it times out (5 s here).
    try:
        wait_until(
            lambda: all(p.stat().st_blocks == 0 for p in swap.iterdir()),
            20,
            "the host's swap file to be empty",
        )
    except AssertionError as e:
        ended = [x for x in procs.group.log_text("host-0").splitlines() if "session" in x]
        raise AssertionError(f"{e}; the host's session lines: {ended[-12:]}") from None


def test_oom_on_shm_the_victim_exits_3_and_the_other_loses_nothing(
    procs: Procs, tmp_path: Path
) -> None:
    shm = procs.group.workdir / "shm"
    addr, _ = procs.host(
        "--backend",
        "shm",
        "--shm-dir",
        str(shm),
        "--swap-dir",
        str(tmp_path / "swap"),
        "--host-memory",
        "64MiB",
        "--swap",
        "16MiB",
        "--vmm-overhead",
        "0",
    )
    first = procs.guest(
        "--host",
        addr,
        "--shm-dir",
        str(shm),
        "--id",
        "first",
        "--ram",
        "64MiB",
        "--policy",
        "none",
        "--scenario",
        phases(tmp_path, "first", 0.0, "48MiB", 1, 20),
        "--duration",
        "20",
        "--check",
    )
    log = procs.names[first.pid]
    wait_until(lambda: "connected to host" in procs.group.log_text(log), 20, "the first guest")
    second = procs.guest(
        "--host",
        addr,
        "--shm-dir",
        str(shm),
        "--id",
        "second",
        "--ram",
        "64MiB",
        "--policy",
        "none",
        "--scenario",
        phases(tmp_path, "second", 1.0, "40MiB", 1, 1.5),
        "--duration",
        "6",
        "--check",
    )
    first.communicate(timeout=60)
    assert first.returncode == 3, procs.group.log_text(procs.names[first.pid])
    s = procs.finish(second, timeout=60)
    assert s["data_loss_pages"] == 0 and s["pages_checked"] > 0, s["_stderr"]
    assert asyncio.run(_host_stats(addr)).oom_kills >= 1
    # Every kill is of the larger guest. (Sometimes two: a call of the killed guest's
    # that reaches the host before its stream's ABORTED is answered "unknown
    # session", and the guest negotiates again before it hears why: host/service.py.)
    kills = [x for x in procs.group.log_text("host-0").splitlines() if "OOM killer" in x]
    assert kills and all("session of guest first ended" in x for x in kills), kills


def test_bad_swap_dirs_are_one_line_and_exit_2(tmp_path: Path) -> None:
    base = [
        "host",
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "shm",
        "--shm-dir",
        str(tmp_path / "shm"),
    ]
    for args, needle in (
        (["--swap-dir", str(tmp_path / "no" / "swap")], "its parent folder"),
        (["--swap-dir", ""], "--swap-dir: give a folder"),
    ):
        r = run_cli([*base, "--host-memory", "256MiB", "--swap", "64MiB", *args])
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, r.stderr)
