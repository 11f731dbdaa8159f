"""A thousand connections that never negotiate, against a host with 256 descriptors:
an honest guest still gets in within 5 s, health answers, and the host says what it
turned away. (It used to accept until its descriptors ran out, then nobody: no
guest, no health check, and not a word in its log.) Bounded: 1,000 sockets on
127.0.0.1, for a few seconds."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.integration.procs import PAGEHINT, run_cli
from virtqueue import codec
from virtqueue import features as F

FLOOD = 1000
HOST_FDS = 256


def _host_limit() -> None:  # runs in the host's process, before it starts
    resource.setrlimit(resource.RLIMIT_NOFILE, (HOST_FDS, HOST_FDS))


@pytest.fixture
def our_descriptors() -> Iterator[None]:
    """Room in this process for the flood's sockets (the host's own is what is tested)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = FLOOD + 512
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"needs {want} descriptors in the test process (hard limit {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def negotiate(addr: str, guest_id: str) -> str:
    """One negotiation, as a guest's: the status name ("OK" if it got a session)."""
    offer = codec.Negotiation(guest_id, 64 << 20, 4096, F.mask(F.REPORTING), 0)
    with grpc.insecure_channel(addr) as ch:
        try:
            codec.stub(ch).Negotiate(codec.encode_negotiate(offer), timeout=2)
        except grpc.RpcError as e:
            return str(e.code().name)
    return "OK"


@pytest.mark.serial  # a flood of 1,000 sockets, timed against the clock
def test_idle_connections_do_not_lock_guests_out(our_descriptors: None, tmp_path: Path) -> None:
    ready, log = tmp_path / "ready", tmp_path / "host.log"
    with log.open("w") as out:
        host = subprocess.Popen(
            [*PAGEHINT, "host", "--listen", "127.0.0.1:0", "--ready-file", str(ready)],
            stdout=out, stderr=subprocess.STDOUT, preexec_fn=_host_limit,
        )  # fmt: skip
    flood: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert host.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        addr = ready.read_text().strip()
        port = int(addr.rpartition(":")[2])
        for _ in range(FLOOD):  # connect and say nothing, ever
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            flood.append(s)
        # An honest guest retries as guests do (jittered backoff, here 0.1 s steps).
        t0 = time.monotonic()
        codes = []
        while time.monotonic() - t0 < 5:
            codes.append(negotiate(addr, "honest"))
            if codes[-1] == "OK":
                break
            time.sleep(0.1)
        took = time.monotonic() - t0
        assert codes[-1] == "OK", f"no session within 5 s of the flood: {codes[-5:]}"
        # Health answers (a probe that retries for a few seconds, as orchestrators do).
        for _ in range(10):
            r = run_cli(["health", "--host", addr, "--timeout", "2"], timeout=30)
            if r.returncode == 0:
                break
            time.sleep(0.3)
        assert r.returncode == 0, r.stderr
        # A real guest connects and runs, its flood still open.
        g = run_cli(["guest", "--host", addr, "--id", "real", "--ram", "64MiB", "--duration", "1",
                     "--connect-timeout", "5", "--json", "--quiet"], timeout=60)  # fmt: skip
        assert g.returncode == 0, g.stderr
        assert json.loads(g.stdout.strip().splitlines()[-1])["host_connects"] >= 1
    finally:
        for s in flood:
            s.close()
        host.terminate()
        host.wait(20)
    text = log.read_text()
    assert "connections open, the cap is" in text and "most from 127.0.0.1" in text, text
    print(f"honest negotiation {took:.2f} s after {FLOOD} idle connections ({len(codes)} tries)")
