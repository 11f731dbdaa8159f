from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from host.memory.shm import ShmBackend, ShmRam
from pagehint.errors import UsageError

MIB = 1 << 20


def test_punch_really_frees_and_release_removes(tmp_path: Path) -> None:
    b = ShmBackend(str(tmp_path))
    ram = b.attach("g/1", 4096, 4096)  # 16 MiB
    path = Path(ram.shm_path)
    assert path.parent == tmp_path and "/" not in path.name
    assert ram.resident_pages() == 0  # sparse
    fd = os.open(path, os.O_RDWR)
    m = mmap.mmap(fd, 16 * MIB, mmap.MAP_SHARED)
    m[: 8 * MIB] = b"\x07" * (8 * MIB)
    assert ram.resident_pages() == 2048  # the kernel's count of allocated blocks
    assert ram.discard([(0, 512), (512, 512)]) == 1024
    assert ram.resident_pages() == 1024
    assert m[0:4] == b"\x00" * 4 and m[4 * MIB : 4 * MIB + 1] == b"\x07"
    m.close()
    os.close(fd)
    ram.release()
    assert not path.exists()
    b.close()


def test_discard_free_refused_on_shared_memory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="MADV_FREE is refused on shared memory"):
        ShmBackend(str(tmp_path), discard_mode="free")


def test_orphans_of_a_dead_host_are_removed(tmp_path: Path) -> None:
    (tmp_path / "host.pid").write_text("999999999\n")  # no such process
    orphan = tmp_path / "old-guest-0123abcd.ram"  # named as a host names RAM files
    orphan.write_bytes(b"x")
    theirs = tmp_path / "disk-image.ram"  # not ours, even in a folder a host owned
    theirs.write_bytes(b"precious")
    b = ShmBackend(str(tmp_path))
    assert not orphan.exists() and theirs.exists()
    assert (tmp_path / "host.pid").read_text().strip() == str(os.getpid())
    b.close()
    assert not (tmp_path / "host.pid").exists()


def test_folder_of_a_live_host_is_refused(tmp_path: Path) -> None:
    (tmp_path / "host.pid").write_text(f"{os.getppid()}\n")
    with pytest.raises(UsageError, match="in use by another host"):
        ShmBackend(str(tmp_path))


def test_a_planted_private_folder_is_refused(tmp_path: Path) -> None:
    import os

    from host.memory.shm import ShmBackend

    planted = tmp_path / "pagehint-host-1"
    planted.mkdir()
    os.chown(planted, 65534, 65534)  # another user's folder at our predictable name
    backend = ShmBackend.__new__(ShmBackend)
    backend.dir = planted
    with pytest.raises(UsageError, match="not this user's folder"):
        backend._make_private_folder()
    link = tmp_path / "pagehint-host-2"
    link.symlink_to(tmp_path)
    backend.dir = link
    with pytest.raises(UsageError, match="not this user's folder"):
        backend._make_private_folder()


def test_a_folder_no_host_owned_keeps_its_files(tmp_path: Path) -> None:
    precious = tmp_path / "vm-0123abcd.ram"
    precious.write_bytes(b"precious")  # named like ours, but no host.pid: not ours
    b = ShmBackend(str(tmp_path))
    assert precious.exists()
    b.close()
    with pytest.raises(UsageError, match="empty"):
        ShmBackend("")


def test_only_the_last_part_of_shm_dir_is_created(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"parent folder .*/missing does not exist") as e:
        ShmBackend(str(tmp_path / "missing" / "x"))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "missing").exists()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UsageError, match="exists and is not a folder"):
        ShmBackend(str(tmp_path / "a-file"))
    b = ShmBackend(str(tmp_path / "new"))  # the last part: made, the host's alone
    assert (tmp_path / "new").is_dir() and (tmp_path / "new").stat().st_mode & 0o777 == 0o700
    b.close()


def test_shm_dir_with_a_missing_parent_is_one_line_from_the_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    missing = tmp_path / "nonexistent" / "x"
    r = subprocess.run(
        [sys.executable, "-m", "pagehint", "host", "--listen", "127.0.0.1:0", "--backend", "shm",
         "--shm-dir", str(missing)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "does not exist" in lines[0], r.stderr
    assert not missing.parent.exists()


def test_a_planted_pid_file_link_is_not_followed(tmp_path: Path) -> None:
    # `host --shm-dir /dev/shm` followed a host.pid symbolic link someone planted and
    # overwrote its target with the host's pid.
    folder = tmp_path / "shm"
    folder.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (folder / "host.pid").symlink_to(victim)
    with pytest.raises(UsageError, match=r"cannot write host\.pid"):
        ShmBackend(str(folder))
    assert victim.read_text() == "precious\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_planted_pid_file_does_not_get_other_users_files_removed(tmp_path: Path) -> None:
    # A host.pid naming a dead pid made the host remove every file named like a RAM
    # file: only this user's own regular files are a host of ours's leftovers.
    folder = tmp_path / "shm"
    folder.mkdir()
    (folder / "host.pid").write_text("999999999\n")  # a pid that is not running
    theirs = folder / "g-0000000a.ram"
    theirs.write_bytes(b"x")
    os.chown(theirs, 65534, 65534)
    mine = folder / "g-0000000b.ram"
    mine.write_bytes(b"x")
    backend = ShmBackend(str(folder))
    try:
        assert theirs.exists() and not mine.exists()
    finally:
        backend.close()
    # and a host.pid of another user's names no host of ours: nothing is removed
    (folder / "host.pid").write_text("999999999\n")
    os.chown(folder / "host.pid", 65534, 65534)
    other = folder / "g-0000000c.ram"
    other.write_bytes(b"x")
    with pytest.raises(UsageError, match="not this user's file"):
        ShmBackend(str(folder))
    assert other.exists()


@contextlib.contextmanager
def _written_ram(folder: Path, written: int) -> Iterator[ShmRam]:
    """A 16 MiB guest RAM file whose first ``written`` bytes a guest wrote."""
    b = ShmBackend(str(folder))
    ram = b.attach("g/1", 4096, 4096)
    fd = os.open(ram.shm_path, os.O_RDWR)
    m = mmap.mmap(fd, 16 * MIB, mmap.MAP_SHARED)
    m[:written] = b"\x07" * written
    try:
        yield ram
    finally:
        m.close()
        os.close(fd)
        ram.release()
        b.close()


def test_a_mapping_that_refuses_madv_remove_is_punched_with_fallocate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from host.memory import shm

    tried: list[int] = []

    def refuse(m: mmap.mmap, offset: int, length: int) -> None:
        tried.append(offset)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(shm, "madv_remove", refuse)
    with _written_ram(tmp_path, 8 * MIB) as ram:
        assert ram.discard([(0, 512)]) == 512 and ram.discard([(1024, 512)]) == 512
        assert ram.resident_pages() == 1024  # both holes punched all the same
        assert tried == [0]  # asked once; the backend then punches with fallocate


def test_no_mapping_to_be_had_still_punches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    def no_map(self: ShmRam) -> mmap.mmap:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(ShmRam, "_mapping", no_map)
    with _written_ram(tmp_path, 4 * MIB) as ram:
        assert ram.discard([(0, 512)]) == 512 and ram.resident_pages() == 512
