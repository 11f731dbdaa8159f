"""A guest's id on a host that checks no identity: waiting for its own old session,
and giving up, in one line, when another client holds it for good."""

from __future__ import annotations

import signal

import grpc

from tests.integration.procs import Procs, wait_until
from virtqueue import codec


def guests_of(addr: str) -> set[str]:
    with grpc.insecure_channel(addr) as ch:
        st = codec.decode_host_stats(codec.stub(ch).Stats(codec.encode_stats_request(), timeout=5))
    return {g.guest_id for g in st.guests}


def test_a_restarted_guest_says_why_it_waits_for_its_old_session(procs: Procs) -> None:
    addr, _ = procs.host()
    first = procs.guest("--host", addr, "--id", "phoenix", "--ram", "64MiB", "--workload",
                        "churn", "--duration", "60")  # fmt: skip
    wait_until(lambda: "phoenix" in guests_of(addr), 20, "the first run's session")
    first.send_signal(signal.SIGKILL)  # no Close: the host keeps its session a while
    first.wait(10)
    s = procs.finish(
        procs.guest("--host", addr, "--id", "phoenix", "--ram", "64MiB", "--workload", "churn",
                    "--duration", "1", "--connect-timeout", "20")
    )  # fmt: skip
    waits = [x for x in s["_stderr"].splitlines() if "did not open" in x]
    # One line (the wait is ~5 s; a line per attempt would be one per backoff step).
    assert len(waits) == 1, s["_stderr"]
    assert "guest id 'phoenix'" in waits[0] and "earlier run of this guest" in waits[0]
    assert "5s after that session's last call" in waits[0] and "--session-timeout" in waits[0]
    assert s["host_connects"] == 1


def test_a_guest_whose_id_was_taken_while_paused_exits_nonzero(procs: Procs) -> None:
    addr, _ = procs.host("--session-timeout", "1")
    flags = ("--id", "twin", "--ram", "64MiB", "--workload", "churn", "--duration", "30")
    g = procs.guest("--host", addr, *flags)
    wait_until(lambda: "twin" in guests_of(addr), 20, "the guest's session")
    g.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: "twin" not in guests_of(addr), 20, "the paused guest's session to end")
        other = procs.guest("--host", addr, *flags)  # claims the id in plain text
        wait_until(lambda: "twin" in guests_of(addr), 20, "the other client's session")
    finally:
        g.send_signal(signal.SIGCONT)
    g.wait(60)
    log = procs.group.log_text(procs.names[g.pid])
    errors = [x for x in log.splitlines() if "error:" in x]
    assert g.returncode != 0, log
    assert len(errors) == 1, log
    assert "guest id 'twin' was taken by another client (" in errors[0], errors[0]
    assert errors[0].endswith("; exiting"), errors[0]
    assert "Traceback" not in log
    assert other.poll() is None  # the client that holds the id carries on
