"""Test-wide setup: async tests on uvloop (pytest-asyncio 1.5 loop factories), and
the host's default port held for the whole run.

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

import asyncio
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import uvloop

from pagehint.config import HostConfig
from tests import logs


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"uvloop": uvloop.new_event_loop}


_KEY = pytest.StashKey[socket.socket]()
_HELD = pytest.StashKey[bool]()


def default_address() -> tuple[str, int]:
    host, _, port = HostConfig().listen.rpartition(":")
    return host, int(port)


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        # An xdist worker: the controlling process took the port before any
        # worker started (it is not ours to take here).
        config.stash[_HELD] = bool(config.workerinput.get("pagehint_port_held"))
        return
    s = socket.socket()
    try:
        s.bind(default_address())  # no SO_REUSEPORT: nobody else can bind it now
        s.listen()
    except OSError:
        s.close()
        config.stash[_HELD] = False
        return
    config.stash[_KEY] = s
    config.stash[_HELD] = True


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: tell each worker whether the controller holds the port."""
    node.workerinput["pagehint_port_held"] = node.config.stash.get(_HELD, False)


def pytest_unconfigure(config: pytest.Config) -> None:
    s = config.stash.get(_KEY, None)
    if s is not None:
        s.close()


@pytest.fixture
def default_port_held(request: pytest.FixtureRequest) -> bool:
    """Whether this run holds the default port (False: it was taken before the run)."""
    return request.config.stash.get(_HELD, False)


@pytest.fixture(autouse=True)
def _our_loggers_reset() -> Iterator[None]:
    """Levels a command set (``setup``: --quiet, -v) and captures (tests/logs.py)
    end with the test that made them: the next test starts from unset."""
    yield
    logs.reset()
