"""The host as an exposed service: identity, ownership, limits, clean failures."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from pagehint.certs import make_certs
from tests.integration.procs import PAGEHINT, Procs, free_port, run_cli, wait_until
from virtqueue import codec
from virtqueue import features as F

RAM = 64 << 20


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    make_certs(d / "ours", ["g1", "g2"], [])
    make_certs(d / "theirs", ["g1"], [])
    return d


def tls_flags(certs: Path, who: str, ca: str = "ours", side: str = "ours") -> list[str]:
    c = certs / side
    return ["--tls-cert", str(c / f"{who}.crt"), "--tls-key", str(c / f"{who}.key"),
            "--tls-ca", str(certs / ca / "ca.crt")]  # fmt: skip


def negotiate(addr: str, guest_id: str, creds: Any = None, **md: str) -> tuple[str, str]:
    """A raw negotiation: (status name, session or details)."""
    ch = grpc.secure_channel(addr, creds) if creds else grpc.insecure_channel(addr)
    with ch:
        try:
            reply = codec.stub(ch).Negotiate(
                codec.encode_negotiate(
                    codec.Negotiation(guest_id, RAM, 4096, F.mask(F.REPORTING), 0)
                ),
                timeout=5,
                metadata=tuple(md.items()),
            )
        except grpc.RpcError as e:
            return e.code().name, e.details() or ""  # type: ignore[attr-defined]
    return "OK", codec.decode_accepted(reply).session


def guests_of(addr: str) -> set[str]:
    with grpc.insecure_channel(addr) as ch:
        st = codec.decode_host_stats(codec.stub(ch).Stats(codec.encode_stats_request(), timeout=5))
    return {g.guest_id for g in st.guests}


def test_mutual_tls_identities(procs: Procs, certs: Path) -> None:
    addr, _ = procs.host("--backend", "shm", *tls_flags(certs, "host"))
    # A guest with a certificate from another CA, or with none: refused, one line.
    for flags in (tls_flags(certs, "guest-g1", side="theirs"), []):
        r = run_cli(["guest", "--host", addr, "--id", "g1", "--duration", "1",
                     "--connect-timeout", "2", *flags])  # fmt: skip
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "cannot reach host" in lines[0], r.stderr
    # A certificate for g1 cannot act as g2.
    r = run_cli(["guest", "--host", addr, "--id", "g2", "--duration", "1",
                 *tls_flags(certs, "guest-g1")])  # fmt: skip
    assert r.returncode == 2 and "may act only as guest 'g1'" in r.stderr, r.stderr
    # A valid one runs memhog on real memory with no data loss.
    s = procs.finish(
        procs.guest("--host", addr, "--id", "g1", "--ram", "256MiB", "--scenario", "memhog",
                    "--duration", "4", "--check", *tls_flags(certs, "guest-g1"))
    )  # fmt: skip
    assert s["data_loss_checked"] and s["data_loss_pages"] == 0 and s["invariants"] == "ok"
    assert s["reported_bytes"] > 0 and s["host_reported_bytes"] == s["reported_bytes"]
    # Host-wide figures: an admin certificate only.
    ours = certs / "ours"

    def creds(who: str) -> Any:
        return grpc.ssl_channel_credentials(
            (ours / "ca.crt").read_bytes(), (ours / f"{who}.key").read_bytes(),
            (ours / f"{who}.crt").read_bytes(),
        )  # fmt: skip

    for who, ok in (("guest-g2", False), ("admin", True)):
        with grpc.secure_channel(addr, creds(who)) as ch:
            try:
                codec.stub(ch).Stats(codec.encode_stats_request(), timeout=5)
                got = True
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
                got = False
        assert got == ok, who
    r = run_cli(["health", "--host", addr, *tls_flags(certs, "admin")])
    assert r.returncode == 0, r.stderr
    # The lab's compare runs its guests against that host with their certificate.
    r = run_cli(["compare", "--host", addr, "--policies", "none", "--workload", "churn",
                 "--duration", "2", "--ram", "128MiB", "--out", str(certs / "cmp"),
                 *tls_flags(certs, "guest-g2")], timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]


def test_tokens_without_tls(procs: Procs, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("g1 0123456789abcdef0123\nadmin fedcba9876543210fedc\n")
    addr, _ = procs.host("--tokens", str(tokens))
    assert negotiate(addr, "g1")[0] == "UNAUTHENTICATED"
    assert (
        negotiate(addr, "g1", **{"x-pagehint-token": "wrong-wrong-wrong"})[0] == "UNAUTHENTICATED"
    )
    s = procs.finish(
        procs.guest("--host", addr, "--id", "g1", "--token", "0123456789abcdef0123",
                    "--workload", "memhog", "--duration", "3", "--ram", "128MiB")
    )  # fmt: skip
    assert s["reported_bytes"] > 0


def test_a_running_guests_session_cannot_be_taken_over(procs: Procs) -> None:
    addr, _ = procs.host()
    victim = procs.guest("--host", addr, "--id", "victim", "--ram", "256MiB",
                         "--workload", "memhog", "--duration", "6")  # fmt: skip
    wait_until(lambda: "victim" in guests_of(addr), 20, "the victim's session")
    for _ in range(10):
        code, details = negotiate(addr, "victim")
        assert code == "ALREADY_EXISTS" and "live session" in details, (code, details)
    s = procs.finish(victim)
    assert s["host_connects"] == 1 and s["report_failures"] == 0


def test_session_flood_then_an_honest_guest_still_connects(procs: Procs) -> None:
    addr, _ = procs.host("--backend", "shm", "--max-sessions", "8", "--session-timeout", "2")
    codes = [negotiate(addr, f"flood-{i}") for i in range(16)]
    assert [c for c, _ in codes].count("OK") == 8
    refused = [d for c, d in codes if c != "OK"]
    assert all(c == "RESOURCE_EXHAUSTED" for c, _ in codes if c != "OK")
    assert all("limit of 8 sessions" in d and "/dev/shm" not in d for d in refused), refused
    # The flood's sessions hold no stream and make no call: they expire, and an honest
    # guest that keeps trying (RESOURCE_EXHAUSTED is not final) gets in and completes.
    s = procs.finish(
        procs.guest("--host", addr, "--id", "honest", "--ram", "128MiB", "--workload",
                    "memhog", "--duration", "3", "--connect-timeout", "15")
    )  # fmt: skip
    assert s["data_loss_pages"] == 0 and s["host_connects"] == 1


def test_host_fails_before_announcing_ready(tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    ready = tmp_path / "ready"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            [*PAGEHINT, "host", "--listen", "127.0.0.1:0", "--backend", "shm", "--shm-dir",
             str(shm), "--metrics-port", str(port), "--ready-file", str(ready)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    lines = [x for x in r.stderr.strip().splitlines() if "error" in x]
    assert r.returncode == 2 and len(lines) == 1 and "cannot listen" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not ready.exists(), "announced ready before failing"
    assert not list(shm.glob("*.ram"))


def test_metrics_listen_on_loopback_by_default(procs: Procs) -> None:
    procs.host("--metrics-port", str(free_port()))
    wait_until(lambda: "metrics on" in procs.group.log_text("host-0"), 10, "the metrics line")
    assert "metrics on http://127.0.0.1:" in procs.group.log_text("host-0")


def test_lab_children_do_not_inherit_a_flag_of_another_meaning(tmp_path: Path) -> None:
    # PAGEHINT_CAPACITY means blocks per report to a guest; lab children must not see
    # it (the host's memory flag is --memory-limit, PAGEHINT_MEMORY_LIMIT).
    r = subprocess.run(
        [*PAGEHINT, "compare", "--policies", "none", "--workload", "churn", "--duration", "2",
         "--ram", "128MiB", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PAGEHINT_CAPACITY": "8GiB"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.serial  # against the clock
def test_sigterm_stops_a_scenario_of_a_million_marks_within_a_second(tmp_path: Path) -> None:
    f = tmp_path / "marks.toml"
    inner = '{op = "repeat", count = 1000000, steps = [{op = "mark", label = "m"}]}'
    f.write_text(f'[[steps]]\nop = "repeat"\ncount = 1000000\nsteps = [{inner}]\n')
    p = subprocess.Popen([*PAGEHINT, "guest", "--scenario", str(f), "--quiet", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(2.0)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=10)
    assert time.monotonic() - t0 < 1.0, err
    assert p.returncode == 0 and '"stopped_by_signal": true' in out, err


async def test_a_session_ended_by_the_host_ends_its_stream_with_a_status(procs: Procs) -> None:
    addr, _ = procs.host("--session-timeout", "1")
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = codec.stub(ch)
        reply = await stub.Negotiate(
            codec.encode_negotiate(codec.Negotiation("idle", RAM, 4096, F.mask(F.REPORTING), 0)),
            timeout=5,
        )
        session = codec.decode_accepted(reply).session
        call = stub.Reporting(metadata=((codec.SESSION_KEY, session),))
        # An idle stream, no calls: the janitor expires the session within ~2 s, and
        # the stream must end with a status (before the fix it hung silently).
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(call.read(), 10)
        assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_guest_paused_past_the_session_timeout_comes_back(procs: Procs) -> None:
    addr, _ = procs.host("--session-timeout", "1")
    g = procs.guest("--host", addr, "--id", "sleeper", "--ram", "128MiB", "--workload",
                    "memhog", "--duration", "8")  # fmt: skip
    wait_until(lambda: "sleeper" in guests_of(addr), 20, "the guest's session")
    g.send_signal(signal.SIGSTOP)
    time.sleep(3)  # its session expires meanwhile
    g.send_signal(signal.SIGCONT)
    s = procs.finish(g)
    assert s["host_connects"] >= 2, "it noticed the session was gone and negotiated again"
    assert s["isolated_bytes"] == 0


@pytest.mark.serial  # against the clock
def test_churn_faster_than_it_can_go_still_stops_on_time() -> None:
    # Each 10 ms slice overruns: the workload must still yield, so SIGTERM and
    # --duration get in (it used to spin until killed).
    t0 = time.monotonic()
    r = run_cli(["guest", "--ram", "64MiB", "--workload", "churn", "--rate", "10000000",
                 "--duration", "2", "--quiet"], timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 6
