"""Guests sharing a process, and what the host sees of them, with real processes."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import grpc

from tests.integration.procs import PAGEHINT, Procs, procs, wait_until  # noqa: F401
from virtqueue import codec


def test_a_signal_stops_guests_not_yet_started(procs: Procs, tmp_path: Path) -> None:  # noqa: F811
    addr, _ = procs.host()
    spec = tmp_path / "g.txt"
    spec.write_text(
        f"--host {addr} --id early --ram 64MiB --workload churn --duration 30\n"
        f"--host {addr} --id late --ram 64MiB --workload churn --duration 30 --start-delay 20\n"
    )
    p = subprocess.Popen(
        [*PAGEHINT, "guest-group", str(spec), "--json", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def early_running() -> bool:
        # Running, not just negotiated: its workload's pages reached the host. (A
        # stop between the host's answer to its negotiation and the guest reading
        # it finds it still connecting, and a connecting guest does not start.)
        with grpc.insecure_channel(addr) as ch:
            st = codec.stub(ch).Stats(codec.encode_stats_request(), timeout=5)
        guests = codec.decode_host_stats(st).guests
        return any(g.guest_id == "early" and g.resident_bytes for g in guests)

    wait_until(early_running, 20, "the early guest to run")
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert time.monotonic() - t0 < 15  # not the late guest's 20 s delay, nor its 30 s run
    assert p.returncode == 2
    summaries = [json.loads(x) for x in out.splitlines()]
    assert [s["guest_id"] for s in summaries] == ["early"]
    assert summaries[0]["stopped_by_signal"]
    assert "guest late: error: stopped by a signal before it started" in err
    assert "Traceback" not in err


def test_quiet_guests_keep_a_short_session_alive_and_the_host_peak_is_sampled(
    procs: Procs,  # noqa: F811
) -> None:
    # A host that ends sessions idle for 1 s: the guest's slow (quiet) poll must
    # still come often enough; and the host-wide peak is sampled by the host
    # itself, though guests ask only for their own figures.
    addr, _ = procs.host("--backend", "shm", "--session-timeout", "1")
    s = procs.finish(
        procs.guest("--host", addr, "--ram", "128MiB", "--workload", "memhog", "--duration", "4")
    )
    assert s["host_connects"] == 1 and s["fences"] == 0
    with grpc.insecure_channel(addr) as ch:
        st = codec.decode_host_stats(codec.stub(ch).Stats(codec.encode_stats_request(), timeout=5))
    assert st.peak_resident_bytes >= 32 << 20
