"""No test takes the host's default port (a user's host may be on it)."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import default_address


def test_the_default_port_is_held_while_the_tests_run(default_port_held: bool) -> None:
    # tests/conftest.py holds it for the whole run: a test that starts a host
    # without --listen fails on every machine ("cannot bind"), not only on the
    # machine of a user whose host is running. Where it was taken before the run
    # (the user's host, another test run), it is not ours, and nothing is shown.
    if not default_port_held:
        pytest.skip("the default port was taken before this run started: not ours to hold")
    with socket.socket() as s, pytest.raises(OSError):
        s.bind(default_address())
