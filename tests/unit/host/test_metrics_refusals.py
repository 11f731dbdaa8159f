"""The host's metrics count what it turns away, and what its ledgers cost."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from host.device import BalloonDevice
from host.limits import ConnectionWatch
from host.memory.sim import SimBackend
from host.metrics import host_metrics
from host.sessions import LimitReached
from pagehint.metrics import FnCollector
from virtqueue import features as F
from virtqueue.codec import Negotiation


def samples(d: BalloonDevice, watch: ConnectionWatch | None = None) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(FnCollector(lambda: host_metrics(d, watch)))
    text = generate_latest(registry).decode()
    return {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
    }


def test_refused_negotiations_ledger_and_connections_are_exported() -> None:
    d = BalloonDevice(SimBackend(), max_sessions=2, max_sessions_per_peer=1)
    d.table.negotiate(Negotiation("a", 64 << 20, 4096, F.mask(F.REPORTING), 0), peer="10.0.0.1")
    with pytest.raises(LimitReached):
        d.table.negotiate(Negotiation("b", 64 << 20, 4096, F.mask(F.REPORTING), 0), peer="10.0.0.1")
    watch = ConnectionWatch(port=1, cap=4096, handshake_timeout=2, idle=2)
    watch.look()
    got = samples(d, watch)
    assert got['pagehint_host_refused_negotiations_total{reason="peer_limit"}'] == 1
    assert got["pagehint_host_ledger_bytes"] == d.backend.overhead_bytes() > 0
    assert got["pagehint_host_max_connections"] == 4096
    assert got["pagehint_host_open_descriptors"] > 0
    assert got["pagehint_host_connection_cap_reached_total"] == 0
