"""Knobs written once: a guest or host flag left unset gives its config field's
default (the flags read their defaults from the config dataclasses: support.py
``default_of``), and no flag of theirs writes a default of its own."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from host.limits import (
    default_calls_per_peer,
    default_max_connections,
    default_max_sessions,
    default_sessions_per_peer,
)
from pagehint.cli import build_parser
from pagehint.cli.guest import config_from_args as guest_config
from pagehint.cli.host import config_from_args as host_config
from pagehint.cli.support import default_of
from pagehint.config import BootConfig, GuestConfig, HintingConfig, HostConfig, TraceConfig

CLI = Path(__file__).resolve().parents[4] / "pagehint" / "cli"


def _differences(got: Any, want: Any, where: str) -> list[str]:
    out = []
    for f in dataclasses.fields(want):
        a, b = getattr(got, f.name), getattr(want, f.name)
        if dataclasses.is_dataclass(b) and a is not None:
            out += _differences(a, b, f"{where}.{f.name}")
        elif a != b:
            out.append(f"{where}.{f.name}: flag gives {a!r}, config says {b!r}")
    return out


def test_every_guest_flag_left_unset_gives_its_config_default() -> None:
    parser = build_parser({})
    # --duration: the command refuses to run nothing; --trace-*: with a trace only.
    cfg = guest_config(parser.parse_args(["guest", "--duration", "1"]))
    diffs = _differences(cfg, GuestConfig(), "GuestConfig")
    assert diffs == ["GuestConfig.duration: flag gives 1.0, config says None"]


def test_every_host_flag_left_unset_gives_its_config_default() -> None:
    cfg = host_config(build_parser({}).parse_args(["host"]))
    # Four are this machine's: what its descriptor limit leaves room for
    # (host/limits.py), at most the config's; the rest are the config's own.
    sessions = default_max_sessions()
    per_peer = default_sessions_per_peer(sessions)
    machine = {
        "max_sessions": sessions,
        "max_sessions_per_peer": per_peer,
        "max_calls_per_peer": default_calls_per_peer(per_peer),
        "max_connections": default_max_connections(sessions, HostConfig.backend),
    }
    assert _differences(cfg, dataclasses.replace(HostConfig(), **machine), "HostConfig") == []
    assert all(v <= getattr(HostConfig, k) for k, v in machine.items())


def test_the_machine_derived_host_defaults_follow_the_descriptor_limit() -> None:
    # (the comparison above held only with a high soft limit before it named these)
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        cfg = host_config(build_parser({}).parse_args(["host"]))
        assert cfg.max_sessions == default_max_sessions() < HostConfig.max_sessions
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("module", ["guest.py", "host.py"])
def test_no_guest_or_host_flag_writes_a_default_of_its_own(module: str) -> None:
    """Every default= of add_flag there is None or read from a config (default_of)."""
    tree = ast.parse((CLI / module).read_text())
    literal = [
        f"line {kw.value.lineno}: {ast.unparse(kw.value)}"
        for call in ast.walk(tree)
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "add_flag"
        for kw in call.keywords
        if kw.arg == "default"
        and not (isinstance(kw.value, ast.Constant) and kw.value.value is None)
        and not (
            isinstance(kw.value, ast.Call) and getattr(kw.value.func, "id", "") == "default_of"
        )
    ]
    assert literal == []


def test_default_of_reads_the_field_and_renders_it_as_flag_text() -> None:
    assert default_of(HintingConfig, "delay") == "2"
    assert default_of(GuestConfig, "rate") == "20000"
    assert default_of(GuestConfig, "host") is None
    assert default_of(TraceConfig, "mapping") == "identity"
    assert default_of(BootConfig, "holes") == f"{BootConfig().holes:g}"
    with pytest.raises(KeyError):
        default_of(HostConfig, "no_such_knob")
