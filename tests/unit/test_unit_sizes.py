"""Small units with one job: no function in our packages runs over 60 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["guest", "host", "lab", "pagehint", "virtqueue", "examples"]
LIMIT = 60


def long_functions() -> list[str]:
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "_pb2" in path.name:  # generated
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > LIMIT:
                        found.append(
                            f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})"
                        )
    return found


def test_no_function_runs_over_60_lines() -> None:
    assert long_functions() == []


def test_the_check_sees_a_long_function(tmp_path: Path, monkeypatch: object) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    tree = ast.parse(f"def f():\n{body}\n")
    (fn,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    assert (fn.end_lineno or 0) - fn.lineno + 1 == LIMIT + 1 > LIMIT
