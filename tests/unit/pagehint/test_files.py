"""Settings files: regular files only, and only so much of them (never /dev/zero)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pagehint.cli import main
from pagehint.errors import UsageError
from pagehint.files import read_small, read_small_text


def test_devices_fifos_and_big_files_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^--tokens /dev/zero: not a regular file$"):
        read_small("/dev/zero", "--tokens")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file"):
        read_small(str(fifo), "scenario")  # would wait for a writer for ever if opened plainly
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(UsageError, match="larger than 100 bytes"):
        read_small(str(big), "x", limit=100)
    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    with pytest.raises(UsageError, match="not UTF-8 text"):
        read_small_text(str(tmp_path / "bin"), "x")
    assert read_small_text(str(big), "x", limit=101) == "x" * 101


@pytest.mark.parametrize(
    "argv",
    [
        ["host", "--tokens", "/dev/zero"],
        ["host", "--tls-cert", "/dev/zero", "--tls-key", "/dev/zero", "--tls-ca", "/dev/zero"],
        ["guest", "--scenario", "/dev/zero"],
    ],
)
def test_the_flags_that_read_settings_refuse_a_device(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv, env={}) == 2
    err = capsys.readouterr().err
    assert "/dev/zero: not a regular file" in err and err.count("\n") == 1


def test_a_folder_is_one_line_and_leaves_no_descriptor_open(tmp_path: Path) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    for _ in range(20):
        with pytest.raises(UsageError, match=r"^--tokens .*: a folder, not a file$"):
            read_small(str(tmp_path), "--tokens")  # was IsADirectoryError from fdopen
        with pytest.raises(UsageError, match="not a regular file"):
            read_small("/dev/zero", "x")
        (tmp_path / "f").write_text("ok")
        assert read_small_text(str(tmp_path / "f"), "x") == "ok"
    assert open_fds() == before
