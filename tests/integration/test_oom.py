"""Two real guests on a real `pagehint host --host-memory --swap`: the second pushes
the host past its memory and its swap, the OOM killer ends the first (the larger,
oom_badness), and that guest says so in one line, exits 3, and its summary has
``oom_killed: true``; the other runs on, having waited for its faults."""

from __future__ import annotations

from pathlib import Path

from pagehint.schema import GuestSummary, decode
from tests.integration.procs import Procs, wait_until

MIB = 1 << 20


def scenario(tmp: Path, name: str, size: str, hold: float) -> str:
    path = tmp / f"{name}.toml"
    path.write_text(
        f'[[steps]]\nop = "alloc"\nname = "a"\nsize = "{size}"\n'
        f'[[steps]]\nop = "sleep"\nseconds = {hold}\n'
    )
    return str(path)


def test_the_second_guest_pushes_past_swap_and_the_larger_is_killed(
    procs: Procs, tmp_path: Path
) -> None:
    addr, _ = procs.host("--host-memory", "96MiB", "--swap", "16MiB", "--vmm-overhead", "0")
    common = ["--host", addr, "--ram", "64MiB", "--policy", "none"]
    first = procs.guest(
        "--id",
        "first",
        "--scenario",
        scenario(tmp_path, "first", "60MiB", 30),
        *common,
        "--duration",
        "30",
    )
    first_log = procs.names[first.pid]
    wait_until(
        lambda: "connected to host" in procs.group.log_text(first_log), 20, "the first guest"
    )
    second = procs.guest(
        "--id",
        "second",
        "--scenario",
        scenario(tmp_path, "second", "60MiB", 3),
        *common,
        "--duration",
        "6",
    )
    out, _ = first.communicate(timeout=60)
    assert first.returncode == 3, procs.group.log_text(first_log)
    text = procs.group.log_text(first_log)
    last = text.strip().splitlines()[-1]
    assert "connection lost" not in text and "reconnect" not in text  # just the one line
    assert last.startswith("pagehint guest: killed by the host's OOM killer (oom_badness")
    killed: GuestSummary = decode(GuestSummary, out.strip().splitlines()[-1])
    assert killed["oom_killed"] is True
    survivor = procs.finish(second, timeout=60)
    assert survivor["oom_killed"] is False
    # it pushed the host into swap: it waited for the writeback its faults forced
    assert survivor["fault_wait_seconds"] > 0
