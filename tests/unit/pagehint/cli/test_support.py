"""Flags with PAGEHINT_* defaults, and the checks every command shares."""

from __future__ import annotations

import pytest

from pagehint.cli.support import RaisingParser, add_flag, add_switch, env_name, parse_ram
from pagehint.errors import UsageError


def test_env_names_follow_the_flags() -> None:
    assert env_name("--trace-map") == "PAGEHINT_TRACE_MAP"


def test_a_flag_takes_its_default_from_the_environment() -> None:
    p = RaisingParser(prog="t")
    add_flag(p, {"PAGEHINT_RAM": "2GiB"}, "--ram", default="1GiB")
    assert p.parse_args([]).ram == "2GiB"
    assert p.parse_args(["--ram", "4GiB"]).ram == "4GiB"  # the flag wins


def test_switches_from_the_environment() -> None:
    p = RaisingParser(prog="t")
    add_switch(p, {"PAGEHINT_JSON": "true"}, "--json")
    assert p.parse_args([]).json is True
    with pytest.raises(UsageError, match="PAGEHINT_JSON='maybe': not a boolean"):
        add_switch(RaisingParser(prog="t"), {"PAGEHINT_JSON": "maybe"}, "--json")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("32MiB", "out of range"),
        ("65GiB", "out of range"),
        ("66MiB", "not a multiple of 4 MiB"),
        ("lots", "--ram"),
    ],
)
def test_ram_is_checked_against_the_contract(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_ram(text)


def test_a_good_ram_size() -> None:
    assert parse_ram("64MiB") == 64 << 20 and parse_ram("64GiB") == 64 << 30


def test_an_old_flag_name_still_works_says_so_in_help_and_warns_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pagehint.cli import build_parser
    from pagehint.cli.support import _OldName, warn_old_names

    _OldName.warned.discard("--capacity")
    parser = build_parser({})
    a = parser.parse_args(["host", "--capacity", "1GiB", "--capacity", "2GiB"])
    assert a.memory_limit == "2GiB"
    assert capsys.readouterr().err == ""  # said once the flags all passed
    warn_old_names(a, "pagehint host")
    warn_old_names(a, "pagehint host")
    b = parser.parse_args(["host", "--memory-limit", "3GiB"])
    assert b.memory_limit == "3GiB"
    warn_old_names(b, "pagehint host")
    err = capsys.readouterr().err
    assert err.count("warning: --capacity is an old name of --memory-limit") == 1
    sub = next(x for x in parser._actions if x.dest == "command")
    help_text = sub.choices["host"].format_help()  # type: ignore[attr-defined]
    assert "--capacity: the old name, still taken" in " ".join(help_text.split())
