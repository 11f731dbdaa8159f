"""What a guest believes of the RAM file its host names (docs/architecture.md, "Who trusts what").

A host names the file in its Negotiate answer; the guest opens it read-write
and writes its pages into it. A host that names a file of someone else's (a
lying host, or anyone in the middle of a plain-text link) must not get it
overwritten: the guest refuses, in one line, before it maps or writes anything,
and exits non-zero.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.procs import _child_env
from tests.integration.procs import PAGEHINT, Procs, wait_until

RAM = 64 << 20


@pytest.fixture
def liar(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A lying host: (its address, the file whose text is the path it names)."""
    says = tmp_path / "liar.says"
    ready = tmp_path / "liar.addr"
    p = subprocess.Popen(
        [PAGEHINT[0], "-m", "tests.integration.lying_host", str(says), str(ready)],
        cwd=Path(__file__).resolve().parents[2],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(ready.exists, 30, "the lying host to serve")
        yield ready.read_text(), says
    finally:
        p.kill()
        p.wait(10)


def _digest(path: Path) -> tuple[str, int]:
    st = os.stat(path)
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_blocks


def _with_data(path: Path, size: int = RAM) -> Path:
    path.write_bytes(bytes(range(256)) * (size // 256))
    return path


def _sparse(path: Path, size: int = RAM) -> Path:
    with path.open("xb") as f:
        f.truncate(size)
    return path


def _outside(tmp: Path, ram_dir: Path) -> tuple[str, Path]:
    victim = _with_data(tmp / "victim-01234567.ram")
    return str(victim), victim


def _symlink(tmp: Path, ram_dir: Path) -> tuple[str, Path]:
    victim = _with_data(tmp / "victim")
    (ram_dir / "g-0000000a.ram").symlink_to(victim)
    return str(ram_dir / "g-0000000a.ram"), victim


def _hard_link(tmp: Path, ram_dir: Path) -> tuple[str, Path]:
    # Inside the folder, named as a host names RAM files, a regular file: only its
    # link count gives it away (a link to /etc/passwd would look the same).
    victim = _with_data(tmp / "victim")
    os.link(victim, ram_dir / "g-0000000b.ram")
    return str(ram_dir / "g-0000000b.ram"), victim


def _has_data(tmp: Path, ram_dir: Path) -> tuple[str, Path]:
    victim = _with_data(ram_dir / "g-0000000c.ram")
    return str(victim), victim


def _wrong_size(tmp: Path, ram_dir: Path) -> tuple[str, Path]:
    victim = _sparse(ram_dir / "g-0000000d.ram", 2 * RAM)
    return str(victim), victim


def _symlinked_folder(tmp: Path, ram_dir: Path) -> tuple[str, Path]:
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    victim = _sparse(elsewhere / "g-0000000e.ram")
    (ram_dir / "pagehint-host-1").symlink_to(elsewhere)
    return str(ram_dir / "pagehint-host-1" / "g-0000000e.ram"), victim


def _dot_dot(tmp: Path, ram_dir: Path) -> tuple[str, Path]:
    victim = _sparse(tmp / "g-0000000f.ram")
    return f"{ram_dir}/../g-0000000f.ram", victim


def _not_a_ram_name(tmp: Path, ram_dir: Path) -> tuple[str, Path]:
    victim = _sparse(ram_dir / "disk.img")
    return str(victim), victim


Case = Callable[[Path, Path], tuple[str, Path]]
CASES: dict[str, tuple[Case, str]] = {
    "outside the folder": (_outside, "not in this guest's RAM folder"),
    "a symlink": (_symlink, "symbolic link"),
    "a hard link": (_hard_link, "has 2 links"),
    "a file with data": (_has_data, "already holds data"),
    "the wrong size": (_wrong_size, "not this guest's RAM size"),
    "a symlinked host folder": (_symlinked_folder, "symbolic link"),
    "a path with ..": (_dot_dot, "not a plain absolute path"),
    "not a RAM file's name": (_not_a_ram_name, "not a RAM file's name"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_host_cannot_make_the_guest_overwrite_a_file(
    liar: tuple[str, Path], tmp_path: Path, case: str
) -> None:
    addr, says = liar
    ram_dir = tmp_path / "ram"
    ram_dir.mkdir()
    make, rule = CASES[case]
    named, victim = make(tmp_path, ram_dir)
    says.write_text(named)
    before = _digest(victim)
    # The folder through the environment (PAGEHINT_SHM_DIR): a guest without the
    # setting at all shows the attack succeeding rather than a flag error.
    r = subprocess.run(
        [*PAGEHINT, "guest", "--host", addr, "--id", "g", "--ram", "64MiB", "--workload",
         "memhog", "--duration", "2", "--connect-timeout", "5"],
        env={**_child_env(), "PAGEHINT_SHM_DIR": str(ram_dir)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert _digest(victim) == before, f"{case}: the guest wrote into {victim}"
    errors = [x for x in r.stderr.splitlines() if "error" in x]
    assert r.returncode != 0, r.stderr
    assert len(errors) == 1 and named in errors[0] and rule in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert "mapped guest RAM" not in r.stderr


def test_an_honest_host_in_the_guests_folder_is_believed(procs: Procs, tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    addr, _ = procs.host("--backend", "shm", "--shm-dir", str(shm))
    s = procs.finish(
        procs.guest("--host", addr, "--shm-dir", str(shm), "--ram", "64MiB", "--workload",
                    "memhog", "--duration", "2")
    )  # fmt: skip
    assert s["backend"] == "shm" and s["data_loss_checked"] and s["data_loss_pages"] == 0


def test_a_host_folder_the_guest_was_not_given_is_one_line(procs: Procs, tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    addr, _ = procs.host("--backend", "shm", "--shm-dir", str(shm))
    p = procs.guest("--host", addr, "--ram", "64MiB", "--workload", "memhog", "--duration", "2")
    p.wait(30)
    log = procs.group.log_text(procs.names[p.pid])
    errors = [x for x in log.splitlines() if "error" in x]
    assert p.returncode == 2 and len(errors) == 1, log
    assert "not in this guest's RAM folder /dev/shm" in errors[0] and "--shm-dir" in errors[0]
    # The session it opened is closed: the host removes the file at once.
    wait_until(lambda: not list(shm.glob("*.ram")), 10, "the refused session's file to go")
