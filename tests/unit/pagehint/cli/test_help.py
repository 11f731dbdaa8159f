"""`pagehint COMMAND --help`: every flag explained, every default shown, and the
names a user can give (policies, shipped scenarios, workloads) listed."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from guest.workloads.scenario import BUILTIN_DIR
from pagehint.cli import build_parser
from pagehint.config import BUILTIN_POLICIES, WORKLOADS


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser({})
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def flags() -> Iterator[tuple[str, argparse.ArgumentParser, argparse.Action]]:
    for name, parser in commands().items():
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                yield name, parser, action


def shown(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The action's help as --help prints it (with %(default)s filled in)."""
    return parser._get_formatter()._expand_help(action) if action.help else ""


def label(name: str, action: argparse.Action) -> str:
    return f"{name} {'/'.join(action.option_strings) or action.dest}"


def test_every_command_is_walked() -> None:
    assert {"demo", "guest", "guest-group", "host", "compare", "loadtest", "sweep"} <= set(
        commands()
    ) and {"health", "certs"} <= set(commands())


def test_every_flag_of_every_command_has_help() -> None:
    missing = [label(n, a) for n, _, a in flags() if not a.help or a.help == argparse.SUPPRESS]
    assert not missing, f"flags without help: {missing}"


def test_every_default_is_shown() -> None:
    hidden = [
        f"{label(n, a)} (default {a.default!r}): {shown(p, a)!r}"
        for n, p, a in flags()
        if isinstance(a.default, str) and a.default and a.default not in shown(p, a)
    ]
    assert not hidden, "defaults --help does not show:\n" + "\n".join(hidden)


@pytest.mark.parametrize("name", sorted(commands()))
def test_help_renders(name: str) -> None:
    text = commands()[name].format_help()
    assert "--help" in text


def _helps_of(*dests: str) -> list[tuple[str, str]]:
    return [(label(n, a), shown(p, a)) for n, p, a in flags() if a.dest in dests]


def test_policy_flags_name_the_built_ins_and_the_plug_in_forms() -> None:
    found = _helps_of("policy", "policies")
    assert {n.split()[0] for n, _ in found} >= {"guest", "demo", "compare", "loadtest"}
    for flag, text in found:
        for name in (*BUILTIN_POLICIES, "FILE.py:CLASS", "MODULE:CLASS"):
            if name == "none" and flag.startswith(("demo", "loadtest")):
                continue  # given to guests in turn: `none` is allowed, but not the point
            assert name in text, (flag, name, text)


def test_scenario_and_workload_flags_list_what_ships() -> None:
    scenarios = sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))
    assert scenarios, BUILTIN_DIR
    found = _helps_of("scenario")
    assert {n.split()[0] for n, _ in found} == {"guest", "demo", "compare", "sweep"}
    for flag, text in found:
        for name in scenarios:
            assert name in text, (flag, name, text)
    for flag, text in _helps_of("workload"):
        for name in WORKLOADS:
            assert name in text, (flag, name, text)


def test_the_top_help_names_policies_and_scenarios() -> None:
    text = build_parser({}).format_help()
    for name in (*BUILTIN_POLICIES, "FILE.py:CLASS", "MODULE:CLASS"):
        assert name in text, name
    for path in BUILTIN_DIR.glob("*.toml"):
        assert path.stem in text, path.stem


def test_a_default_from_the_environment_is_shown_as_such() -> None:
    parser = build_parser({"PAGEHINT_SEED": "7", "PAGEHINT_TOKEN": "s3cret-token-value"})
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join(sub.choices["guest"].format_help().split())
    assert "random seed for workloads (default: 7, from PAGEHINT_SEED)" in text
    assert "s3cret" not in text  # a flag without a built-in default never shows its value


def test_a_flag_name_is_a_switch_everywhere_or_nowhere() -> None:
    # One PAGEHINT_<FLAG> variable per name: it cannot be a boolean for one command
    # and a value for another (loadtest's on/off --queue-socket once read the
    # host's socket path as "not a boolean").
    kinds: dict[str, set[bool]] = {}
    for _, _, a in flags():
        for opt in a.option_strings:
            kinds.setdefault(opt, set()).add(a.nargs == 0)
    both = sorted(opt for opt, k in kinds.items() if len(k) > 1)
    assert not both, f"switches in one command, valued flags in another: {both}"
