"""Guests come back promptly after a host outage, with jitter, not in lockstep."""

from __future__ import annotations

import signal
import time

import grpc
import pytest

from pagehint.config import GuestConfig
from tests.integration.procs import Procs, free_port, wait_until
from virtqueue import codec

GUESTS = {"g0", "g1", "g2"}
BOUND = GuestConfig().reconnect_max + 1.0  # backoff maximum + 1 s


def guests_of(addr: str) -> set[str]:
    try:
        with grpc.insecure_channel(addr) as ch:
            reply = codec.stub(ch).Stats(codec.encode_stats_request(), timeout=1)
    except grpc.RpcError:
        return set()
    return {g.guest_id for g in codec.decode_host_stats(reply).guests}


@pytest.mark.parametrize(
    "outage", [0.3, 3.0, pytest.param(10.0, marks=pytest.mark.slow)], ids=["0.3s", "3s", "10s"]
)
def test_every_guest_is_back_within_backoff_max_plus_one_second(
    procs: Procs, outage: float
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    addr, host = procs.host(listen=listen)
    guests = [
        procs.guest("--host", addr, "--id", g, "--ram", "128MiB", "--workload", "churn",
                    "--rate", "2000", "--duration", str(outage + 14))
        for g in sorted(GUESTS)
    ]  # fmt: skip
    wait_until(lambda: guests_of(addr) >= GUESTS, 20, "every guest connected")
    host.send_signal(signal.SIGKILL)
    host.wait(10)
    time.sleep(outage)
    addr, host = procs.host(listen=listen)
    back = time.monotonic()
    seen: dict[str, float] = {}

    def all_back() -> bool:
        for g in guests_of(addr) - set(seen):
            seen[g] = round(time.monotonic() - back, 2)
        return set(seen) >= GUESTS

    wait_until(all_back, BOUND + 5, "every guest back")
    took = max(seen.values())
    assert took <= BOUND, f"guests came back {seen} s after the host (bound {BOUND}s)"
    for g in guests:
        s = procs.finish(g, timeout=60)
        assert s["host_connects"] == 2 and s["isolated_bytes"] == 0
