from __future__ import annotations

import json

import pytest

from pagehint import __version__
from pagehint.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"], env={})
    assert e.value.code == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["guest", "--ram", "3x", "--duration", "1"], "--ram: bad RAM size '3x'"),
        (["guest", "--ram", "102MiB", "--duration", "1"], "not a multiple of 4 MiB"),
        (["guest", "--policy", "magic", "--duration", "1"], "--policy: unknown value 'magic'"),
        (["guest", "--workload", "nope"], "--workload nope: unknown value"),
        (["guest"], "nothing to run"),
        (["guest", "--scenario", "/nonexistent.toml"], "scenario /nonexistent.toml: cannot read"),
        (["guest", "--duration", "x"], "--duration"),
        (["guest", "--duration", "1", "--hinting-order", "12"], "must be 0..10"),
        (["guest", "--workload", "churn", "--rate", "1e12"], "--rate 1e+12: must be above 0"),
        (["guest", "--duration", "1", "--start-delay", "-1"], "--start-delay"),
    ],
)
def test_bad_guest_flags_give_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv, env={}) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_unknown_flag_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["guest", "--bogus"], env={})
    assert e.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_env_var_sets_a_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["guest", "--duration", "1"], env={"PAGEHINT_RAM": "7x"}) == 2
    assert "--ram: bad RAM size '7x'" in capsys.readouterr().err


def test_guest_only_run_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "guest",
            "--ram",
            "64MiB",
            "--workload",
            "memhog",
            "--duration",
            "0.5",
            "--json",
            "--quiet",
        ],
        env={},
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    for key in ("policy", "ram_bytes", "reported_bytes", "alloc_ops", "data_loss_pages"):
        assert key in summary
    assert summary["ram_bytes"] == 64 << 20
    assert summary["alloc_ops"] > 0
