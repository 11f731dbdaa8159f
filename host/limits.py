"""Limits that protect the host from running out of what it needs to serve everyone."""

from __future__ import annotations

import resource

# Descriptors kept for everything but sessions: the listening sockets, metrics,
# logs, the event loop and grpc's own.
HEADROOM_FDS = 128
# Each session may hold a RAM file (shm) and its guest's connection: two
# descriptors, and a third spare for a reconnecting guest's new connection.
FDS_PER_SESSION = 3
# However many descriptors there are: a 64 GiB sim guest costs ~16 MB of ledger.
MAX_SESSIONS_CAP = 1024


def default_max_sessions() -> int:
    """Sessions the descriptor limit leaves room for (at least 1, at most 1024)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_SESSIONS_CAP
    return max(1, min(MAX_SESSIONS_CAP, (soft - HEADROOM_FDS) // FDS_PER_SESSION))
