"""--queue-socket end to end: guests whose streams cross the host's Unix socket
lose nothing when the host is killed mid-report and comes back on the same
path (the killed host's socket file taken over), fence as over gRPC, and agree
with the host on what it discarded; a host told a path where a file lies
refuses in one line and leaves the file alone."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.integration.procs import Procs, free_port, run_cli
from tests.integration.test_fault_paths import assert_sound


def test_host_killed_twice_mid_report_loses_nothing(procs: Procs, tmp_path: Path) -> None:
    sock = str(tmp_path / "queue.sock")
    listen = f"127.0.0.1:{free_port()}"
    host_args = ("--backend", "shm", "--latency", "0.2", "--queue-socket", sock)
    addr, host = procs.host(*host_args, listen=listen)
    common = ("--host", addr, "--queue-socket", sock, "--ram", "256MiB", "--check")
    guests = [
        procs.guest(*common, "--workload", "memhog", "--policy", "reporting", "--delay", "0.5",
                    "--id", "merged", "--duration", "14"),
        procs.guest(*common, "--workload", "memhog", "--policy", "bitmap", "--threshold", "4",
                    "--id", "seed", "--duration", "14"),
    ]  # fmt: skip
    for _ in range(2):
        time.sleep(3.0)
        host.send_signal(signal.SIGKILL)  # with --latency 0.2, mostly mid-report
        host.wait(10)
        time.sleep(0.3)
        addr, host = procs.host(*host_args, listen=listen)
    for g in guests:
        s = procs.finish(g, timeout=90)
        assert_sound(s)
        assert s["isolated_bytes"] == 0
        assert s["host_connects"] >= 2, s["_stderr"][-3000:]
        assert s["fences"] == s["host_connects"] - 1
        assert s["reported_bytes_this_host"] > 0, s["_stderr"][-3000:]
        assert s["host_reported_bytes"] == s["reported_bytes_this_host"], s
    host.terminate()
    host.wait(10)
    logs = sorted(procs.group.workdir.glob("host-*.log"))
    assert len(logs) == 3
    for log in logs:
        text = log.read_text()
        assert "Traceback" not in text and "Unhandled" not in text, text[-3000:]


def test_a_file_at_the_socket_path_is_refused_and_kept(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    r = run_cli(["host", "--listen", "127.0.0.1:0", "--queue-socket", str(f)], timeout=30)
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "exists and is not a socket" in err[0], r.stderr
    assert f.read_text() == "mine"


def start_error(addr: str, sock: str) -> str:
    """A guest started with --queue-socket SOCK must fail: its last line of stderr."""
    r = run_cli(
        ["guest", "--host", addr, "--queue-socket", sock, "--ram", "256MiB",
         "--workload", "memhog", "--duration", "5", "--connect-timeout", "2"],
        timeout=60,
    )  # fmt: skip
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    return r.stderr.strip().splitlines()[-1]


def test_a_guest_given_no_socket_gives_up_at_start_naming_it(procs: Procs, tmp_path: Path) -> None:
    addr, _ = procs.host()
    last = start_error(addr, str(tmp_path / "none.sock"))
    assert "--queue-socket" in last and "none.sock" in last, last


def test_a_guest_given_another_hosts_socket_says_so_at_start(procs: Procs, tmp_path: Path) -> None:
    other = str(tmp_path / "other.sock")
    addr, _ = procs.host()
    procs.host("--queue-socket", other)  # a second host: its socket knows no session of addr's
    assert "the socket of another host?" in start_error(addr, other)
