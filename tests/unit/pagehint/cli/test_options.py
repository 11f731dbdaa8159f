"""Every run writes a folder of its own: runs started in the same second do not
share one, and an --out that holds an earlier run is refused, not mixed."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import lab.compare
import lab.demo
import lab.loadtest
import pagehint.cli.sweep
from pagehint.cli import main
from pagehint.cli.options import CLAIM, run_folder

# Each lab command, the runner it hands its config to, and a report that runner
# could return (enough for the command to print it and pick its exit status).
COMMANDS: dict[str, tuple[list[str], Any, str, dict[str, Any]]] = {
    "demo": (["demo", "--backend", "sim"], lab.demo, "run_demo", {}),
    "compare": (["compare"], lab.compare, "run_compare", {"results": {}}),
    "loadtest": (
        ["loadtest"],
        lab.loadtest,
        "run_loadtest",
        {"errors": [], "data_loss_pages": 0},
    ),
    "sweep": (
        ["sweep"],
        pagehint.cli.sweep,
        "run_sweep",
        {"results": [], "interrupted": False, "runs_failed": []},
    ),
}


@pytest.fixture
def one_second(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every run starts in the same second, in an empty working folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt, *args: "20260102-030405")


def runner(
    monkeypatch: pytest.MonkeyPatch, command: str
) -> tuple[list[str], Callable[[], list[Path]]]:
    """The command's argv, with its runner replaced by one that records its folder."""
    argv, module, name, report = COMMANDS[command]
    outs: list[Path] = []

    def run(cfg: Any, *rest: Any) -> dict[str, Any]:
        outs.append(cfg.out)
        return dict(report)

    monkeypatch.setattr(module, name, run)
    return [*argv, "--json"], lambda: outs


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.usefixtures("one_second")
def test_runs_started_in_the_same_second_get_folders_of_their_own(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, outs = runner(monkeypatch, command)
    assert main(argv, env={}) == 0
    assert main(argv, env={}) == 0
    first, second = outs()
    assert first != second, "two runs of one second share a folder"
    assert first.is_dir() and second.is_dir()
    assert first.parent == second.parent == Path("runs")
    assert second.name == first.name + "-2"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_out_holding_a_run_is_refused_not_mixed(
    command: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    argv, outs = runner(monkeypatch, command)
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    assert main([*argv, "--out", str(out)], env={}) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: already holds files (summary.json)" in err, err
    assert outs() == []  # nothing ran


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_out_new_or_empty_is_this_runs(
    command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    argv, outs = runner(monkeypatch, command)
    new, empty = tmp_path / "a" / "new", tmp_path / "empty"
    empty.mkdir()
    assert main([*argv, "--out", str(new)], env={}) == 0
    assert main([*argv, "--out", str(empty)], env={}) == 0
    assert outs() == [new, empty]
    assert (empty / CLAIM).exists()  # claimed: a second run given it now is refused
    assert main([*argv, "--out", str(empty)], env={}) == 2


@pytest.mark.usefixtures("one_second")
def test_the_default_folder_is_made_exclusively() -> None:
    made = [run_folder(None, "x-") for _ in range(3)]
    assert [p.name for p in made] == [
        "x-20260102-030405",
        "x-20260102-030405-2",
        "x-20260102-030405-3",
    ]
    # A folder another run made first (it exists, empty or not) is never reused.
    Path("runs/y-20260102-030405").mkdir()
    assert run_folder(None, "y-").name == "y-20260102-030405-2"


def test_an_out_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("")
    with pytest.raises(Exception, match="is not a folder"):
        run_folder(str(f), "")
