"""Small units with one job: no function in our packages runs over 60 lines, and no
class over 250 (a class that grows past it holds two jobs: split it)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["guest", "host", "lab", "pagehint", "virtqueue", "examples"]
LIMIT = 60
CLASS_LIMIT = 250


def long_functions(root: Path = ROOT, packages: list[str] = PACKAGES) -> list[str]:
    return _longer(root, packages, (ast.FunctionDef, ast.AsyncFunctionDef), LIMIT)


def long_classes(root: Path = ROOT, packages: list[str] = PACKAGES) -> list[str]:
    return _longer(root, packages, (ast.ClassDef,), CLASS_LIMIT)


def _longer(
    root: Path, packages: list[str], kinds: tuple[type[ast.AST], ...], limit: int
) -> list[str]:
    found = []
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            if "_pb2" in path.name:  # generated
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, kinds):
                    assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > limit:
                        found.append(
                            f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines})"
                        )
    return found


def test_no_function_runs_over_60_lines() -> None:
    assert long_functions() == []


def test_the_check_sees_a_long_function(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    (pkg / "long.py").write_text(f"def short():\n    pass\n\n\nasync def f():\n{body}\n")
    assert long_functions(tmp_path, ["pkg"]) == ["pkg/long.py:5 f (61)"]


def test_no_class_runs_over_250_lines() -> None:
    assert long_classes() == []


def test_the_check_sees_a_long_class(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(CLASS_LIMIT))
    (pkg / "big.py").write_text(f"class Big:\n{body}\n")
    assert long_classes(tmp_path, ["pkg"]) == ["pkg/big.py:1 Big (251)"]
