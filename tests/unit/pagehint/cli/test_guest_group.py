"""`pagehint guest-group`: many guests on one loop; every bad line named, one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pagehint.cli import main


def group_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "guests.txt"
    path.write_text(text)
    return str(path)


def test_three_guests_in_one_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = group_file(
        tmp_path,
        "# three loopback guests\n"
        + "".join(
            f"--id g{i} --ram 64MiB --workload {w} --duration 1 --policy reporting --seed {i}\n"
            for i, w in enumerate(["memhog", "churn", "fragment"])
        ),
    )
    assert main(["guest-group", f, "--json", "--quiet"], env={}) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [s["guest_id"] for s in lines] == ["g0", "g1", "g2"]
    assert all(s["alloc_ops"] > 0 and s["data_loss_pages"] in (0, None) for s in lines)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("--id a --duration 1 --bogus\n", "line 1: unrecognized arguments: --bogus"),
        ("--id a --duration 1\n--id a --duration 1\n", "line 2: guest id 'a' is already used"),
        ("--id a --ram 3MiB --duration 1\n", "line 1: --ram"),
        ("--id a\n", "line 1: nothing to run"),
        ("--id 'a --duration 1\n", "line 1: No closing quotation"),
        ("# only a comment\n\n", "no guests"),
        ("--id a --duration 1\n--help\n", "line 2: --help is not a guest to run"),
        ("--id a --duration 1 --timeline a\x00b\n", "line 1: contains a NUL character"),
        ("--id a --duration 1 " + "--seed 1 " * 3000 + "\n", "line 1: longer than 16384"),
        (
            "--id a --duration 1 --ack-log r.txt\n--id b --duration 1 --ack-log ./r.txt\n",
            "line 2: --ack-log ./r.txt is already used on line 1",
        ),
        (
            "--id a --duration 1 --metrics-port 9555\n--id b --duration 1 --metrics-port 9555\n",
            "line 2: --metrics-port 9555 is already used on line 1",
        ),
    ],
)
def test_bad_lines_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    assert main(["guest-group", group_file(tmp_path, text)], env={}) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_devices_and_fifos_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    assert main(["guest-group", "/dev/zero"], env={}) == 2
    assert "/dev/zero: not a regular file" in capsys.readouterr().err
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert main(["guest-group", str(fifo)], env={}) == 2  # would block forever if opened
    assert "not a regular file" in capsys.readouterr().err


def test_missing_and_binary_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["guest-group", str(tmp_path / "none.txt")], env={}) == 2
    assert "cannot read" in capsys.readouterr().err
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    assert main(["guest-group", str(binary)], env={}) == 2
    assert "cannot read" in capsys.readouterr().err


def test_a_failing_guest_does_not_stop_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # g1 names a host that is not there: it fails at start, g0 runs to the end.
    f = group_file(
        tmp_path,
        "--id g0 --ram 64MiB --workload churn --duration 1\n"
        "--id g1 --ram 64MiB --workload churn --duration 1 --host 127.0.0.1:1 "
        "--connect-timeout 0.5\n",
    )
    assert main(["guest-group", f, "--json", "--quiet"], env={}) == 2
    out = capsys.readouterr()
    assert [json.loads(x)["guest_id"] for x in out.out.splitlines()] == ["g0"]
    assert "guest g1: error: cannot reach host 127.0.0.1:1" in out.err


def test_the_loop_share_ends_with_the_group(tmp_path: Path) -> None:
    from guest.workloads import share

    f = group_file(
        tmp_path,
        "--id a --ram 64MiB --workload memhog --duration 0.5\n"
        "--id b --ram 64MiB --workload churn --duration 0.5\n",
    )
    assert main(["guest-group", f, "--json", "--quiet"], env={}) == 0
    assert share.shared is None  # later runs in this process are not throttled
