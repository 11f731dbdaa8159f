"""The host's default port is held while the tests run.

A test that starts a host (or a health check, or a guest) on the default
address instead of port 0 or a ready file would fight a host the user started
from the README, and fail their `make test`. The port is held here for the rest
of the session, so such a test fails on every machine, at once, with "cannot
bind". (`pytest_configure` of a conftest runs when it is loaded, during
collection: before any test of the run, integration tests included, starts.)
Where the port is taken already — the user's own host, or another test run —
it is not ours to hold, and the tests must pass beside it anyway.
"""

from __future__ import annotations

import socket

import pytest

from pagehint.config import HostConfig

_KEY = pytest.StashKey[socket.socket]()


def default_address() -> tuple[str, int]:
    host, _, port = HostConfig().listen.rpartition(":")
    return host, int(port)


def pytest_configure(config: pytest.Config) -> None:
    s = socket.socket()
    try:
        s.bind(default_address())  # no SO_REUSEPORT: nobody else can bind it now
        s.listen()
    except OSError:
        s.close()
        return
    config.stash[_KEY] = s


def pytest_unconfigure(config: pytest.Config) -> None:
    s = config.stash.get(_KEY, None)
    if s is not None:
        s.close()
