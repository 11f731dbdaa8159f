"""The house's shape: argparse lives only in the CLI room (pagehint/cli/), so a
knob's flag is never defined in a wing; import-linter holds the layers (no
module below the CLI imports it)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
PACKAGES = ("guest", "host", "lab", "virtqueue", "pagehint", "examples")
CLI = ROOT / "pagehint" / "cli"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_argparse_is_imported_only_in_the_cli_room() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for pkg in PACKAGES
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if CLI not in p.parents and "argparse" in _imports(p)
    ]
    assert offenders == []


def test_the_cli_room_holds_every_command() -> None:
    from pagehint.cli import build_parser

    parser = build_parser({})
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():  # type: ignore[attr-defined]
        handler = p.get_default("handler")
        assert handler.__module__.startswith("pagehint.cli."), (name, handler.__module__)
