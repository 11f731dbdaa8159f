"""Limits that protect the host from running out of what it needs to serve everyone.

Descriptors are the scarce thing: every connection, open or still handshaking,
holds one, and so does every shm guest's RAM file. A host whose table filled up
with connections that never negotiated could accept no guest, and said nothing
(gRPC's accept fails quietly). So the host raises its soft limit to the hard
one at start, as servers commonly do, and derives from what it got how many
sessions and connections it takes; gRPC turns away connections past that cap
at once, before the table can fill.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
from collections import Counter

# Descriptors kept for everything but sessions: the listening sockets, metrics,
# logs, the event loop and grpc's own.
HEADROOM_FDS = 128
# Each session may hold a RAM file (shm) and its guest's connection: two
# descriptors, and a third spare for a reconnecting guest's new connection.
FDS_PER_SESSION = 3
# However many descriptors there are: each session holds a ledger and a few
# objects (sim: a few KiB until its guest touches memory; host/memory/sim.py).
MAX_SESSIONS_CAP = 1024
# A shm session's RAM file: its descriptor and the one mmap keeps (Python's mmap
# duplicates the descriptor it maps). A sim session holds none.
RAM_FDS_PER_SESSION = {"shm": 2, "sim": 0}
# However many descriptors there are: four connections per session at most (its
# own, a reconnecting one, the lab's and a probe's). Each costs gRPC ~15 KiB
# (measured: 2,000 idle connections, 13-17 KiB each), so 4096 is ~60 MiB.
MAX_CONNECTIONS_CAP = 4 * MAX_SESSIONS_CAP
# Never fewer connections than this, whatever the arithmetic says: a host must take
# at least its health checks and a guest.
MIN_CONNECTIONS = 16
# A client address may hold a quarter of the sessions (one client cannot take them
# all), and at least this many: the most guests `pagehint demo` runs on one machine.
MIN_SESSIONS_PER_PEER = 16
# Raising the soft limit: never past this, however high the hard limit (or
# unlimited): the caps above never need more.
NOFILE_TARGET = 1 << 20


def soft_nofile() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return NOFILE_TARGET if soft == resource.RLIM_INFINITY else int(soft)


def raise_nofile() -> int:
    """Raise the soft descriptor limit to the hard one (at most NOFILE_TARGET); the
    soft limit now. A limit that cannot be raised is left as it is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE_TARGET if hard == resource.RLIM_INFINITY else min(int(hard), NOFILE_TARGET)
    if soft != resource.RLIM_INFINITY and soft < want:
        # (It can fail: above fs.nr_open, say. Then the limit stays as it was.)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return soft_nofile()


def default_max_sessions() -> int:
    """Sessions the descriptor limit leaves room for (at least 1, at most 1024)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_SESSIONS_CAP
    return max(1, min(MAX_SESSIONS_CAP, (soft - HEADROOM_FDS) // FDS_PER_SESSION))


def default_max_connections(max_sessions: int, backend: str) -> int:
    """Connections the descriptor limit leaves room for once the sessions' RAM files
    have theirs (at least MIN_CONNECTIONS, at most MAX_CONNECTIONS_CAP)."""
    files = RAM_FDS_PER_SESSION.get(backend, 2) * max_sessions
    room = soft_nofile() - HEADROOM_FDS - files
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS_CAP, room))


def default_sessions_per_peer(max_sessions: int) -> int:
    """A quarter of the sessions, at least MIN_SESSIONS_PER_PEER (never above all)."""
    return min(max_sessions, max(MIN_SESSIONS_PER_PEER, max_sessions // 4))


def default_calls_per_peer(sessions_per_peer: int) -> int:
    """Open calls per address: two per session it may hold, plus 16 (config.py)."""
    return 2 * sessions_per_peer + 16


def open_fds() -> int:
    """Descriptors this process holds now (0 where /proc is not there)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def connections_by_peer(port: int) -> Counter[str]:
    """Established TCP connections to ``port`` on this machine's network namespace,
    by the client's address (from /proc/net/tcp and tcp6: no descriptor is touched).
    Empty where /proc is not there."""
    peers: Counter[str] = Counter()
    want = f"{port:04X}"
    for name, v6 in (("/proc/self/net/tcp", False), ("/proc/self/net/tcp6", True)):
        try:
            with open(name, encoding="ascii") as f:
                next(f, None)  # the header
                for line in f:
                    fields = line.split(None, 4)
                    # sl, local "HEX:PORT", remote "HEX:PORT", state (01: established)
                    if len(fields) < 4 or fields[3] != "01":
                        continue
                    if fields[1].rpartition(":")[2] != want:
                        continue
                    peers[_address(fields[2].rpartition(":")[0], v6)] += 1
        except OSError:
            continue
    return peers


def _address(hexaddr: str, v6: bool) -> str:
    """/proc/net/tcp's address (host byte order, per 32-bit word) as text."""
    import ipaddress

    raw = bytes.fromhex(hexaddr)
    # The kernel prints each 32-bit word as a number in the machine's byte order.
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    words = raw
    ip = ipaddress.IPv6Address(words) if v6 else ipaddress.IPv4Address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


# Connections past this share of the cap count as "at the cap": gRPC is turning
# new ones away (or is about to), and the host says so.
NEAR_CAP = 0.9


class ConnectionWatch:
    """The host's connections against their cap, looked at by the janitor.

    gRPC turns connections past the cap away at once and says nothing, so the host
    looks: its descriptors (cheap: one listdir) every time, and, once they are many
    enough that the cap could be near, its connections by client address (one read
    of /proc/net/tcp). A look that finds them near the cap returns a line to log
    (rate-limited by the caller) naming the clients that hold the most.
    """

    def __init__(self, port: int, cap: int, handshake_timeout: float, idle: float) -> None:
        self.port = port
        self.cap = cap
        self.handshake_timeout = handshake_timeout
        self.idle = idle
        self.descriptors = 0  # held at the last look
        self.connections = 0  # at the last look that counted them (0: not counted)
        self.at_cap = 0  # looks that found the connections at the cap

    def look(self) -> str | None:
        self.descriptors = open_fds()
        if self.descriptors < self.cap // 2:
            self.connections = 0
            return None
        peers = connections_by_peer(self.port)
        self.connections = sum(peers.values())
        if self.connections < self.cap * NEAR_CAP:
            return None
        self.at_cap += 1
        top = ", ".join(f"{addr} ({n})" for addr, n in peers.most_common(3))
        return (
            f"{self.connections} connections open, the cap is {self.cap}: new ones are "
            f"turned away until some close (silent ones after {self.handshake_timeout:g} s, "
            f"idle ones after {self.idle:g} s); most from {top}"
        )
