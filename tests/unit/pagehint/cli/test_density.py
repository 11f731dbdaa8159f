"""`pagehint density`'s flags: bad input is one line (exit 2), before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from pagehint.cli import build_parser, main
from pagehint.cli.density import config_from_args

GIB = 1 << 30


def _args(tmp_path: Path, *flags: str) -> list[str]:
    return ["density", "--out", str(tmp_path / "run"), *flags]


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--swap=-1GiB"], "--swap -1GiB: must not be negative"),
        (["--host-memory=-15GiB"], "--host-memory -15GiB: must not be negative"),
        (["--touch=-4GiB"], "--touch -4GiB: must not be negative"),
        (["--host-memory", "0"], "--host-memory must be positive"),
        (
            [
                "--host-memory",
                "1GiB",
                "--swap",
                "65GiB",
                "--guest-ram",
                "512MiB",
                "--touch",
                "256MiB",
            ],
            "more than 64 x --host-memory",
        ),
        (
            ["--host-memory", "2GiB", "--swap", "1GiB"],
            "one guest is more than the host's memory and swap together",
        ),
        (["--guest-ram", "1GiB", "--touch", "2GiB"], "--touch 2.0 GiB: more than --guest-ram"),
        (["--policies", "none,ballooning"], "--policies: unknown value 'ballooning'"),
        (["--mode", "fast"], "--mode: unknown value 'fast'"),
        (["--guests-max", "0"], "--guests-max"),
        (["--guests-max", "65"], "--guests-max"),
        (["--backend", "kvm"], "--backend: unknown value 'kvm'"),
        (["--settle", "0"], "--settle"),
        (["--boot-orders", "0:50,1:40"], "the shares add up to 90, not 100"),
        (["--boot-holes", "x"], "--boot-holes: bad value 'x'"),
        (
            ["--guest-ram", "512MiB", "--touch", "128MiB", "--boot-footprint", "400MiB"],
            "not less than --guest-ram",
        ),
        (["--host-memory", "15parsecs"], "--host-memory: bad size '15parsecs'"),
    ],
)
def test_bad_input_is_one_line_and_starts_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    said: str,
) -> None:
    def started(*_a: object) -> None:
        raise AssertionError("a run started")

    monkeypatch.setattr("lab.density_report.run_density", started)
    assert main(_args(tmp_path, *flags), env={}) == 2
    err = capsys.readouterr().err
    assert said in err, err
    assert err.count("\n") == 1, err  # one line, no traceback
    assert err.startswith("pagehint density: error: ")
    assert not (tmp_path / "run").exists()  # no run folder claimed


def test_defaults_are_the_cover_letters_setup(tmp_path: Path) -> None:
    a = build_parser({}).parse_args(_args(tmp_path))
    cfg = config_from_args(a)
    assert (cfg.host_memory_bytes, cfg.swap_bytes) == (15 * GIB, 4 * GIB)
    assert (cfg.guest_ram_bytes, cfg.touch_bytes) == (5 * GIB, 4 * GIB)
    assert cfg.policies == ("none", "bitmap", "reporting")
    assert cfg.plan.guests_max == 16 and cfg.plan.stop_at_swap
    assert cfg.boot.size_bytes == 233 << 20
    assert cfg.vmm_overhead_bytes is None  # the host's own default


def test_memhog_mode_defaults(tmp_path: Path) -> None:
    a = build_parser({}).parse_args(_args(tmp_path, "--mode", "memhog"))
    cfg = config_from_args(a)
    assert (cfg.guest_ram_bytes, cfg.touch_bytes, cfg.plan.guests_max) == (6 * GIB, 6 * GIB, 3)
    assert not cfg.plan.stop_at_swap


def test_the_flags_scripts_rely_on(tmp_path: Path) -> None:
    a = build_parser({}).parse_args(
        _args(
            tmp_path,
            "--host-memory",
            "15GiB",
            "--swap",
            "4GiB",
            "--guest-ram",
            "5GiB",
            "--touch",
            "4GiB",
            "--policies",
            "none,bitmap,reporting",
            "--json",
            "--backend",
            "sim",
            "--guests-max",
            "8",
            "--vmm-overhead",
            "72MiB",
        )
    )
    cfg = config_from_args(a)
    assert a.json and cfg.plan.guests_max == 8 and cfg.vmm_overhead_bytes == 72 << 20
