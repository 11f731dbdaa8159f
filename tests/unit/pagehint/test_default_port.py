"""No test takes the host's default port (a user's host may be on it)."""

from __future__ import annotations

import socket

import pytest

from tests.unit.conftest import default_address


def test_the_default_port_is_held_while_the_tests_run() -> None:
    # tests/unit/conftest.py holds it (or the user's own host does): a test that
    # starts a host without --listen fails on every machine ("cannot bind"), not
    # only on the machine of a user whose host is running.
    with socket.socket() as s, pytest.raises(OSError):
        s.bind(default_address())
