"""open_ram_file: the guest opens only a fresh RAM file a host made, in its own folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from guest.mm import BuddyAllocator
from guest.ram import RamFileRefused, SharedRam, open_ram_file
from host.memory.shm import ShmBackend
from pagehint.cli import build_parser, main
from pagehint.cli.guest import config_from_args
from pagehint.config import BARE_MEMORY, ConfigError, GuestConfig

RAM = 64 << 20
PAGES = RAM // 4096


def _sparse(path: Path, size: int = RAM) -> Path:
    """A file as a host makes one: new, 0600, sparse."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, size)
    os.close(fd)
    return path


def _refused(named: Path | str, folder: Path, rule: str) -> None:
    with pytest.raises(RamFileRefused) as e:
        open_ram_file(str(named), str(folder), RAM)
    assert str(named) in str(e.value) and rule in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_a_file_the_host_made_in_the_folder_is_opened(tmp_path: Path) -> None:
    backend = ShmBackend(str(tmp_path))
    try:
        ram = backend.attach("g/1 odd id", PAGES, 4096)
        os.close(open_ram_file(ram.shm_path, str(tmp_path), RAM))
    finally:
        backend.close()


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm here")
def test_a_file_in_the_hosts_private_folder_is_opened() -> None:
    backend = ShmBackend(None)  # /dev/shm/pagehint-host-<pid>/
    try:
        ram = backend.attach("g", PAGES, 4096)
        os.close(open_ram_file(ram.shm_path, "/dev/shm", RAM))
        # Only directly under the guest's folder: not in any folder that is named so.
        _refused(ram.shm_path, Path("/dev/shm/elsewhere"), "not in this guest's RAM folder")
    finally:
        backend.close()


def test_the_guests_folder_may_be_given_through_a_link(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)  # /dev/shm -> /run/shm on some systems
    f = _sparse(real / "g-00000001.ram")
    os.close(open_ram_file(str(f), str(tmp_path / "link"), RAM))
    os.close(open_ram_file(str(tmp_path / "link" / f.name), str(tmp_path / "link"), RAM))


def test_every_rule_refuses_in_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "ram"
    folder.mkdir()
    victim = tmp_path / "victim-00000000.ram"
    victim.write_bytes(b"\x01" * RAM)
    _refused(victim, folder, "not in this guest's RAM folder")
    (folder / "g-0000000a.ram").symlink_to(victim)
    _refused(folder / "g-0000000a.ram", folder, "is a symbolic link")
    os.link(victim, folder / "g-0000000b.ram")
    _refused(folder / "g-0000000b.ram", folder, "has 2 links")
    (folder / "g-0000000c.ram").write_bytes(b"\x01" * RAM)
    _refused(folder / "g-0000000c.ram", folder, "already holds data")
    _sparse(folder / "g-0000000d.ram", RAM + 4096)
    _refused(folder / "g-0000000d.ram", folder, "not this guest's RAM size")
    _sparse(folder / "g-0000000e.ram", RAM - 4096)
    _refused(folder / "g-0000000e.ram", folder, "not this guest's RAM size")
    os.mkfifo(folder / "g-0000000f.ram")
    _refused(folder / "g-0000000f.ram", folder, "not a regular file")
    _refused(folder / "g-00000010.ram", folder, "cannot open: No such file")
    _refused(f"{folder}/../{victim.name}", folder, "not a plain absolute path")
    _refused(f"{folder}//g-0000000d.ram", folder, "not a plain absolute path")
    _refused("ram/g-0000000d.ram", folder, "not a plain absolute path")
    _refused(_sparse(folder / "disk.img"), folder, "not a RAM file's name")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder / "pagehint-host-7").symlink_to(elsewhere)
    _refused(folder / "pagehint-host-7" / _sparse(elsewhere / "g-00000011.ram").name, folder,
             "its folder pagehint-host-7 is a symbolic link")  # fmt: skip
    (folder / "other").mkdir()
    _refused(_sparse(folder / "other" / "g-00000012.ram"), folder, "not in this guest's RAM")
    deep = folder / "pagehint-host-8" / "pagehint-host-9"
    deep.mkdir(parents=True)
    _refused(_sparse(deep / "g-00000013.ram"), folder, "not in this guest's RAM folder")
    assert victim.read_bytes() == b"\x01" * RAM


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_file_or_host_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    # A root guest can open any user's file: one another user prepared would hand
    # this guest's pages to that user. Their folder counts too.
    f = _sparse(tmp_path / "g-00000001.ram")
    os.chown(f, 65534, 65534)
    _refused(f, tmp_path, "it belongs to uid 65534, not to this guest's user")
    theirs = tmp_path / "pagehint-host-42"
    theirs.mkdir(mode=0o700)
    g = _sparse(theirs / "g-00000002.ram")
    os.chown(theirs, 65534, 65534)
    _refused(g, tmp_path, "its folder pagehint-host-42 belongs to uid 65534")


def test_a_file_or_host_folder_open_to_others_is_refused(tmp_path: Path) -> None:
    f = _sparse(tmp_path / "g-00000001.ram")
    os.chmod(f, 0o644)
    _refused(f, tmp_path, "it is open to others (mode 644")
    shared = tmp_path / "pagehint-host-43"
    shared.mkdir(mode=0o700)
    g = _sparse(shared / "g-00000002.ram")
    os.chmod(shared, 0o777)
    _refused(g, tmp_path, "its folder pagehint-host-43 is open to others (mode 777")


def test_one_file_named_to_two_guests_is_refused_by_the_second(tmp_path: Path) -> None:
    f = _sparse(tmp_path / "g-00000001.ram")
    fd = open_ram_file(str(f), str(tmp_path), RAM)  # the first guest maps it
    try:
        _refused(f, tmp_path, "is in use by another guest (locked)")
    finally:
        os.close(fd)
    os.close(open_ram_file(str(f), str(tmp_path), RAM))  # let go: free again


def test_moving_to_a_refused_file_keeps_the_old_one(tmp_path: Path) -> None:
    mm = BuddyAllocator(RAM, model=BARE_MEMORY)
    first = _sparse(tmp_path / "g-00000001.ram")
    ram = SharedRam(str(first), mm, "g", None, folder=str(tmp_path))
    a = mm.alloc(3)
    ram.on_alloc(a, 3)
    victim = tmp_path / "victim"
    victim.write_bytes(b"\x02" * RAM)
    victim.chmod(0o600)
    os.link(victim, tmp_path / "g-00000002.ram")
    with pytest.raises(RamFileRefused, match="has 2 links"):
        ram.move_to(str(tmp_path / "g-00000002.ram"))
    assert ram.path == str(first) and victim.read_bytes() == b"\x02" * RAM
    ram.on_free(a, 3)  # still the old file, stamps intact
    assert ram.data_loss_pages == 0
    ram.close()


def test_the_folder_setting_is_checked_in_one_line() -> None:
    assert GuestConfig().shm_dir == "/dev/shm"  # where a host keeps RAM files by default
    for bad in ("", "  ", "a\0b"):
        with pytest.raises(ConfigError, match="--shm-dir"):
            GuestConfig(shm_dir=bad)
    assert main(["guest", "--shm-dir", "", "--duration", "1"], env={}) == 2
    env = {"PAGEHINT_SHM_DIR": "/shm"}  # compose and kubernetes set it so
    a = build_parser(env).parse_args(["guest", "--duration", "1"])
    assert config_from_args(a).shm_dir == "/shm"


def test_a_hostile_path_is_shown_on_one_short_line(tmp_path: Path) -> None:
    # A newline in the name forged a second log line; a 5,000-character path was
    # repeated whole.
    with pytest.raises(RamFileRefused) as e:
        open_ram_file("/dev/shm/x\nFAKE: data loss 0 pages", str(tmp_path), RAM)
    assert "\n" not in str(e.value) and "x\\nFAKE" in str(e.value)
    with pytest.raises(RamFileRefused) as e:
        open_ram_file("/dev/shm/" + "a" * 5000, str(tmp_path), RAM)
    assert len(str(e.value)) < 600 and "(5009 characters)" in str(e.value)
