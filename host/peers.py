"""Per-client accounting: who a caller is by address, and the penalty for failed tokens.

A client is keyed on its address without the port (each connection has its own
port; one client opens as many as it likes), as OpenSSH's PerSourcePenalties
keys on the source address. IPv4 and IPv6 addresses are kept whole (/32, /128,
OpenSSH's default block sizes).

Failed authentication is slowed per address: after a wrong token every call
from the address is held for a while (0.1 s, doubling per failure up to
``--auth-penalty-max``) before its token is checked, and the failing answer
itself waits as long. Guesses are forgotten after a quiet spell. The table is
bounded: the least recently failed addresses are dropped first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import unquote

# The first penalty; it doubles with each failure up to the configured maximum.
PENALTY_FIRST = 0.1
# An address with no failure for this long starts again from nothing (10 minutes:
# long enough that a patient guesser stays at the maximum, short enough that a
# mistyped token is forgiven within a coffee break).
FORGET_AFTER = 600.0
# Addresses remembered at most (~200 bytes each): past it the least recently
# failed is forgotten, so a client with many addresses cannot grow the table.
MAX_TRACKED = 4096


def peer_address(peer: str) -> str:
    """The client's address from gRPC's peer string, without its port:
    "ipv4:127.0.0.1:5000" → "127.0.0.1", "ipv6:%5B::1%5D:5000" → "::1",
    "unix:/path" → "unix:/path" ("" when there is none)."""
    kind, sep, rest = peer.partition(":")
    if not sep:
        return ""
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        host = unquote(rest).rpartition(":")[0]
        return host.strip("[]") or unquote(rest)
    return peer  # unix sockets, and anything else: the whole string


@dataclass
class _Record:
    failures: int = 0
    last_failure: float = 0.0
    blocked_until: float = 0.0


class AuthThrottle:
    """Failed token checks per client address, and the penalty they earn."""

    def __init__(self, penalty_max: float = 10.0, max_tracked: int = MAX_TRACKED) -> None:
        self.penalty_max = penalty_max
        self.max_tracked = max_tracked
        self._peers: OrderedDict[str, _Record] = OrderedDict()
        self.failures = 0  # failed checks, all addresses (a counter for metrics)
        self.throttled = 0  # calls held while their address was penalised

    def wait(self, address: str, now: float | None = None) -> float:
        """Seconds a call from ``address`` is held before its token is checked (0: none)."""
        if self.penalty_max <= 0:
            return 0.0
        r = self._peers.get(address)
        if r is None:
            return 0.0
        now = time.monotonic() if now is None else now
        if now - r.last_failure > FORGET_AFTER:
            del self._peers[address]
            return 0.0
        return max(0.0, r.blocked_until - now)

    def failed(self, address: str, now: float | None = None) -> float:
        """A token from ``address`` failed: the penalty it earned, in seconds."""
        self.failures += 1
        if self.penalty_max <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        r = self._peers.pop(address, None)
        if r is None or now - r.last_failure > FORGET_AFTER:
            r = _Record()
        r.failures += 1
        r.last_failure = now
        penalty = min(self.penalty_max, PENALTY_FIRST * 2.0 ** min(r.failures - 1, 64))
        r.blocked_until = now + penalty
        self._peers[address] = r  # most recent last: the oldest are dropped first
        while len(self._peers) > self.max_tracked:
            self._peers.popitem(last=False)
        return penalty

    def failures_of(self, address: str) -> int:
        r = self._peers.get(address)
        return 0 if r is None else r.failures
