"""The import rules (pyproject.toml [tool.importlinter]) hold, and the checker
would catch a break: a contract the code does not keep is reported BROKEN."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = str(Path(sys.executable).parent / "lint-imports")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LINT, "--no-cache", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_the_project_keeps_its_layers() -> None:
    r = run()
    assert r.returncode == 0, r.stdout[-3000:]
    assert "BROKEN" not in r.stdout


def test_a_violation_is_caught(tmp_path: Path) -> None:
    # A deliberate violation: a contract saying the policies may not use the
    # allocator (they must). The checker has to name the import that breaks it.
    cfg = tmp_path / "violation.toml"
    cfg.write_text(
        "[tool.importlinter]\n"
        'root_packages = ["guest", "pagehint", "virtqueue"]\n'
        "[[tool.importlinter.contracts]]\n"
        'name = "policies without the allocator"\n'
        'type = "forbidden"\n'
        'source_modules = ["guest.hinting.reporting"]\n'
        'forbidden_modules = ["guest.mm.buddy"]\n'
    )
    r = run("--config", str(cfg))
    assert r.returncode == 1
    assert "BROKEN" in r.stdout and "guest.hinting.reporting -> guest.mm.buddy" in r.stdout
