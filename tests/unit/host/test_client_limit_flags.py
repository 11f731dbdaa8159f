"""The host's flags for client limits: defaults derived from the descriptor limit (which
the host raises to the hard one first), environment variables, one-line errors."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from host import limits
from host.server import connection_options
from pagehint.cli import build_parser
from pagehint.cli.host import config_from_args
from pagehint.config import HostConfig
from pagehint.errors import UsageError


def config(*flags: str, env: dict[str, str] | None = None) -> HostConfig:
    return config_from_args(build_parser(env or {}).parse_args(["host", *flags]))


def test_defaults_follow_the_descriptor_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _w: (256, 256))
    sim = config()
    assert (sim.max_sessions, sim.max_sessions_per_peer, sim.max_connections) == (42, 16, 128)
    shm = config("--backend", "shm")
    assert shm.max_connections == 256 - 128 - 2 * 42  # the RAM files have theirs first
    monkeypatch.setattr(resource, "getrlimit", lambda _w: (1 << 20, 1 << 20))
    big = config()
    assert (big.max_sessions, big.max_sessions_per_peer, big.max_connections) == (1024, 256, 4096)
    assert config("--max-sessions", "8").max_sessions_per_peer == 8  # never above all


def test_flags_and_their_environment_variables() -> None:
    cfg = config(
        "--max-sessions-per-peer", "3", "--max-connections", "100",
        "--handshake-timeout", "500ms", "--idle-connection-timeout", "7",
        env={"PAGEHINT_AUTH_PENALTY_MAX": "30s"},
    )  # fmt: skip
    assert (cfg.max_sessions_per_peer, cfg.max_connections) == (3, 100)
    assert (cfg.handshake_timeout, cfg.idle_connection_timeout) == (0.5, 7.0)
    assert cfg.auth_penalty_max == 30.0
    opts = dict(connection_options(cfg))
    assert opts["grpc.max_allowed_incoming_connections"] == 100
    assert opts["grpc.server_handshake_timeout_ms"] == 500
    assert opts["grpc.max_connection_idle_ms"] == 7000


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-connections", "0"], "--max-connections 0: must be 1..1000000"),
        (["--max-connections", "many"], "--max-connections: bad value 'many'"),
        (["--max-sessions-per-peer", "0"], "--max-sessions-per-peer 0: must be 1..1000000"),
        (["--handshake-timeout", "0"], "--handshake-timeout 0: must be 0.001..86400"),
        (["--idle-connection-timeout", "soon"], "--idle-connection-timeout: bad duration"),
        (["--auth-penalty-max", "2h"], "--auth-penalty-max 7200: must be 0..3600"),
    ],
)
def test_bad_values_are_one_line(flags: list[str], message: str) -> None:
    with pytest.raises(UsageError) as e:
        config(*flags)
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_the_host_raises_its_soft_descriptor_limit_to_the_hard_one() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 300:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    code = (
        "import resource; from host.limits import raise_nofile; "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (300, resource.getrlimit("
        "resource.RLIMIT_NOFILE)[1])); print(raise_nofile())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    want = limits.NOFILE_TARGET if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)
    assert int(out.stdout) == want
