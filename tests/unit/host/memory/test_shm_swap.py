"""The host's memory model on the shm backend: real swap. A chunk swapped out is
parked until its guest acknowledges the Notice naming it; then its pages' bytes are
copied into the host's swap file and punched out of the RAM file (the kernel's count
falls); a touch copies them back; a discard or a kill frees swap; and the model's
resident frames equal the RAM file's blocks where the guest wrote every page it
touched and heard of every eviction (host/memory/shm.py says why only there)."""

from __future__ import annotations

import mmap
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from host.memory.hostmem import CHUNK_PAGES, HostMemory
from host.memory.punch import allocated_bytes
from host.memory.shm import ShmBackend, ShmRam
from pagehint.config import HostConfig
from pagehint.errors import UsageError

PS = 4096
CHUNK = CHUNK_PAGES  # frames
GUEST = 4 * CHUNK  # 8 MiB guests


@pytest.fixture
def ram_dir() -> Iterator[Path]:
    # tmpfs, as /dev/shm is in use: its st_blocks is pages exactly (a disk file
    # system may count its own preallocation).
    d = Path("/dev/shm") / f"pagehint-test-{uuid.uuid4().hex[:8]}"
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Guest:
    """A guest as the real one behaves: report a touch, then write its pages."""

    def __init__(self, b: ShmBackend, name: str) -> None:
        ram = b.attach(name, GUEST, PS, host_memory=True)
        assert isinstance(ram, ShmRam)
        self.ram = ram
        self.fd = os.open(ram.shm_path, os.O_RDWR)
        self.map = mmap.mmap(self.fd, GUEST * PS, mmap.MAP_SHARED)

    def stamp(self, pfn: int) -> bytes:
        return f"{self.ram.guest_id}:{pfn}".encode().ljust(PS, b".")

    def use(self, pfn: int, n: int) -> None:
        self.ram.touch([(pfn, n)])
        for p in range(pfn, pfn + n):
            self.map[p * PS : (p + 1) * PS] = self.stamp(p)

    def hear(self) -> None:
        """Take in the host's Notice of evictions and acknowledge it, as the guest
        does (guest/balloon/driver.py on_notice)."""
        ev = self.ram.take_evicted()
        if ev.ack_id:
            self.ram.acknowledged(ev.ack_id)

    def intact(self, pfn: int, n: int) -> bool:
        return all(self.map[p * PS : (p + 1) * PS] == self.stamp(p) for p in range(pfn, pfn + n))

    def blocks(self) -> int:
        return allocated_bytes(self.ram.fd) // PS

    def agrees(self) -> bool:
        m = self.ram.memory
        assert m is not None
        return m.resident == self.blocks() == self.ram.resident_pages()

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


def backend(ram_dir: Path, swap_dir: Path, memory: int, swap: int) -> ShmBackend:
    model = HostMemory(memory, swap, 0.0, 0.0, 0)
    return ShmBackend(str(ram_dir), model=model, swap_dir=str(swap_dir))


def test_swap_out_copies_and_punches_and_swap_in_brings_the_bytes_back(
    ram_dir: Path, tmp_path: Path
) -> None:
    b = backend(ram_dir, tmp_path / "swap", memory=4 * CHUNK, swap=4 * CHUNK)
    model = b.model
    assert model is not None and b.swap is not None
    a = Guest(b, "a")
    a.use(0, 2 * CHUNK)  # 4 MiB written
    assert a.blocks() == 2 * CHUNK and a.agrees()
    c = Guest(b, "c")
    c.use(0, 3 * CHUNK)  # past the host's memory: a's coldest chunk goes to swap
    assert model.swap_outs == CHUNK and a.ram.swapped_pages() == CHUNK
    # Parked: the bytes stay where the guest may still be using them...
    assert a.blocks() == 2 * CHUNK and b.swap.used_bytes() == 0
    assert a.ram.take_evicted() == ([(0, CHUNK)], 1)
    # ...until it acknowledges the Notice that named them.
    assert a.ram.acknowledged(1) == CHUNK
    assert a.blocks() == CHUNK and a.agrees() and c.agrees()  # the kernel's count fell
    assert b.swap.used_bytes() == CHUNK * PS  # the bytes are in the swap file
    assert a.map[0:PS] == bytes(PS)  # a hole until it is touched
    out = a.ram.touch([(0, 8)])  # a touch of swapped frames copies them back first
    assert out.major == 8 and model.swap_ins == 8
    assert a.intact(0, 8)
    # That fault made room: a's other chunk went to swap; touched, it comes back too.
    a.hear()
    a.ram.touch([(8, 2 * CHUNK - 8)])
    a.hear()
    c.hear()
    assert a.intact(0, 2 * CHUNK) and a.agrees() and c.agrees()
    # The slot of a chunk with nothing in swap is given back and its bytes punched.
    swapped_now = sum(g.ram.swapped_pages() for g in (a, c))
    assert b.swap.used_bytes() == swapped_now * PS
    for g in (a, c):
        g.close()
        g.ram.release()
    assert b.swap.used_bytes() == 0 and len(b.swap.free) == b.swap.slots
    b.close()
    assert not (tmp_path / "swap").joinpath(f"swap-{os.getpid()}").exists()


def test_discard_of_a_swapped_page_frees_its_swap(ram_dir: Path, tmp_path: Path) -> None:
    b = backend(ram_dir, tmp_path / "swap", memory=2 * CHUNK, swap=4 * CHUNK)
    assert b.swap is not None
    a = Guest(b, "a")
    a.use(0, 2 * CHUNK)
    c = Guest(b, "c")
    c.use(0, CHUNK)  # a's first chunk to swap
    a.hear()
    assert a.ram.swapped_pages() == CHUNK and b.swap.used_bytes() == CHUNK * PS
    a.ram.discard([(0, 16)])  # part of it: those pages' swap is punched
    assert a.ram.swapped_pages() == CHUNK - 16
    assert b.swap.used_bytes() == (CHUNK - 16) * PS and not b.swap.free
    a.ram.discard([(16, CHUNK - 16)])  # the rest: the slot is free again
    assert a.ram.swapped_pages() == 0 and b.swap.used_bytes() == 0 and b.swap.free == [0]
    assert a.agrees() and c.agrees()
    for g in (a, c):
        g.close()
    b.close()


def test_a_write_before_the_acknowledgement_is_what_swap_keeps(
    ram_dir: Path, tmp_path: Path
) -> None:
    """The guest may write a page between the host's eviction and its hearing of it
    (the race that lost pages when the host moved bytes at once): the bytes move only
    at the acknowledgement, so that write is what comes back."""
    b = backend(ram_dir, tmp_path / "swap", memory=2 * CHUNK, swap=4 * CHUNK)
    a = Guest(b, "a")
    a.use(0, 2 * CHUNK)
    c = Guest(b, "c")
    c.use(0, CHUNK)
    assert a.ram.swapped_pages() == CHUNK
    a.map[5 * PS : 6 * PS] = b"N" * PS  # written before it heard
    a.hear()
    assert a.agrees()  # moved out: the kernel's count fell
    a.ram.touch([(0, CHUNK)])
    assert a.map[5 * PS : 6 * PS] == b"N" * PS
    assert a.intact(0, 5) and a.intact(6, CHUNK - 6)
    for g in (a, c):
        g.close()
    b.close()


def test_an_acknowledgement_moves_no_chunk_evicted_again_since(
    ram_dir: Path, tmp_path: Path
) -> None:
    """A chunk told evicted, touched back, and evicted again before the first
    acknowledgement arrives is in use again as far as the guest knows: only the
    acknowledgement of the Notice naming it the second time may move it."""
    b = backend(ram_dir, tmp_path / "swap", memory=2 * CHUNK, swap=4 * CHUNK)
    a = Guest(b, "a")
    a.use(0, CHUNK)
    c = Guest(b, "c")
    c.use(0, CHUNK)
    d = Guest(b, "d")
    d.use(0, 8)  # over: a's chunk (the coldest) parked
    first = a.ram.take_evicted()
    assert first == ([(0, CHUNK)], 1)
    a.use(0, 8)  # a touch sent before a heard: those bytes never left the file
    c.ram.discard([(0, 8)])
    c.use(0, 8)  # c's chunk faulted: now newer than a's
    d.use(8, CHUNK - 8)  # over again: a's chunk the coldest, parked again, not yet told
    assert a.ram.swapped_pages() == CHUNK
    assert a.ram.acknowledged(first.ack_id) == 0  # not moved: a was not told yet
    assert a.blocks() == CHUNK and a.intact(0, CHUNK)
    second = a.ram.take_evicted()
    assert second.ack_id == 2
    assert a.ram.acknowledged(second.ack_id) == CHUNK
    assert a.blocks() == 0 and a.agrees()
    a.ram.touch([(0, CHUNK)])
    assert a.intact(0, CHUNK)
    for g in (a, c, d):
        g.close()
    b.close()


def test_a_discard_before_the_acknowledgement_moves_nothing(ram_dir: Path, tmp_path: Path) -> None:
    b = backend(ram_dir, tmp_path / "swap", memory=2 * CHUNK, swap=4 * CHUNK)
    assert b.swap is not None
    a = Guest(b, "a")
    a.use(0, 2 * CHUNK)
    c = Guest(b, "c")
    c.use(0, CHUNK)  # a's first chunk parked
    a.ram.discard([(0, 100)])  # reported free before a heard: punched, no swap
    a.hear()
    assert b.swap.used_bytes() == (CHUNK - 100) * PS and a.agrees()
    a.ram.touch([(100, CHUNK - 100)])
    assert a.intact(100, CHUNK - 100) and b.swap.used_bytes() == 0
    for g in (a, c):
        g.close()
    b.close()


def test_the_model_and_the_kernel_agree_through_a_sequence(ram_dir: Path, tmp_path: Path) -> None:
    b = backend(ram_dir, tmp_path / "swap", memory=5 * CHUNK, swap=8 * CHUNK)
    guests = [Guest(b, n) for n in ("a", "c", "d")]
    steps = [
        (0, 0, 2 * CHUNK),
        (1, 0, 2 * CHUNK),
        (2, CHUNK, 2 * CHUNK),  # over: swaps a's first chunk
        (0, 0, 64),  # a swapped page back (swaps another out)
        (1, 3 * CHUNK, CHUNK),
        (0, 2 * CHUNK, 2 * CHUNK),
    ]
    for i, (g, pfn, n) in enumerate(steps):
        guests[g].use(pfn, n)
        if i == 3:
            guests[1].ram.discard([(0, CHUNK), (CHUNK + 7, 100)])
        for x in guests:
            x.hear()
        for x in guests:
            assert x.agrees(), (i, x.ram.guest_id)
    model = b.model
    assert model is not None and model.swap_outs > 0 and model.swap_ins > 0
    assert b.swap is not None
    assert b.swap.used_bytes() == model.swap_used * PS  # swap too: the file holds what it counts
    # Every page each guest wrote and did not discard is intact, wherever it was.
    # (Each touched whole just before its check: a guest fits, three do not.)
    guests[0].ram.touch([(0, GUEST)])
    assert guests[0].intact(0, 4 * CHUNK)
    for x in guests:
        x.hear()
    guests[2].ram.touch([(0, GUEST)])
    assert guests[2].intact(CHUNK, 2 * CHUNK)
    for x in guests:
        x.hear()
    guests[1].ram.touch([(0, GUEST)])
    assert guests[1].intact(CHUNK, 7) and guests[1].intact(CHUNK + 107, CHUNK - 107)
    assert guests[1].intact(3 * CHUNK, CHUNK)
    for x in guests:
        x.close()
    b.close()


def test_an_oom_kill_frees_the_victims_swap(ram_dir: Path, tmp_path: Path) -> None:
    b = backend(ram_dir, tmp_path / "swap", memory=2 * CHUNK, swap=CHUNK)
    model = b.model
    assert model is not None and b.swap is not None
    a = Guest(b, "a")
    a.use(0, 2 * CHUNK)
    c = Guest(b, "c")
    c.use(0, CHUNK)  # a's chunk to swap: swap is full
    a.hear()
    assert b.swap.used_bytes() == CHUNK * PS
    c.ram.touch([(CHUNK, CHUNK - 8)])  # over and no swap left: a (the larger) is killed
    assert model.oom_kills == 1 and a.ram.killed.startswith("killed by the host's OOM killer")
    assert b.swap.used_bytes() == 0 and b.swap.free == [0]
    a.close()
    a.ram.release()  # the device ends its session: its RAM file goes
    assert a.ram.resident_pages() == 0 and not Path(a.ram.shm_path).exists()
    c.close()
    b.close()


def test_the_default_swap_folder_is_private_and_removed_at_stop(ram_dir: Path) -> None:
    b = ShmBackend(str(ram_dir), model=HostMemory(CHUNK, CHUNK, 0.0, 0.0, 0))
    assert b.swap is not None
    folder = b.swap.dir
    assert folder.parent == Path("/var/tmp") and folder.name == f"pagehint-swap-{os.getpid()}"
    assert folder.stat().st_mode & 0o777 == 0o700
    b.close()
    assert not folder.exists()


def test_no_swap_no_swap_file(ram_dir: Path, tmp_path: Path) -> None:
    b = ShmBackend(str(ram_dir), model=HostMemory(CHUNK, 0, 0.0, 0.0, 0), swap_dir=str(tmp_path))
    assert b.swap is None and list(tmp_path.iterdir()) == []
    b.close()


def test_bad_swap_dirs_are_one_line(ram_dir: Path, tmp_path: Path) -> None:
    model = HostMemory(CHUNK, CHUNK, 0.0, 0.0, 0)
    with pytest.raises(UsageError, match=r"its parent folder .* does not exist"):
        ShmBackend(str(ram_dir), model=model, swap_dir=str(tmp_path / "no" / "swap"))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere
        with pytest.raises(UsageError, match=r"--swap-dir .*locked: cannot use: Permission denied"):
            ShmBackend(str(ram_dir), model=model, swap_dir=str(locked))
    assert not ram_dir.exists() or not list(ram_dir.glob("*.ram"))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"swap_dir": "/tmp"}, "--swap-dir needs --host-memory and --swap"),
        (
            {"host_memory_bytes": 1 << 30, "swap_bytes": 1 << 30, "swap_dir": "/tmp"},
            "--swap-dir: only with --backend shm (sim has no bytes)",
        ),
        (
            {"host_memory_bytes": 1 << 30, "backend": "shm", "swap_dir": "/tmp"},
            "--swap-dir needs --swap (no swap, no swap file)",
        ),
    ],
)
def test_swap_dir_settings(kw: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError) as e:
        HostConfig(**kw)  # type: ignore[arg-type]
    assert str(e.value) == message


def test_a_session_that_ends_unkilled_gives_its_swapped_pages_back_to_its_file(
    ram_dir: Path, tmp_path: Path
) -> None:
    """A guest whose session ends (fenced, timed out, replaced) copies its RAM from
    the old file into the next session's: what the host had moved to swap must be
    back in that file first, or the copy reads holes (zeros)."""
    b = backend(ram_dir, tmp_path / "swap", memory=2 * CHUNK, swap=4 * CHUNK)
    assert b.swap is not None
    a = Guest(b, "a")
    a.use(0, 2 * CHUNK)
    c = Guest(b, "c")
    c.use(0, CHUNK)
    a.hear()  # a's first chunk moved to swap: a hole in a's file
    assert a.blocks() == CHUNK
    a.ram.release()  # the session ends; the guest still has the old file mapped
    assert a.intact(0, 2 * CHUNK)
    assert b.swap.used_bytes() == 0
    for g in (a, c):
        g.close()
    b.close()


def test_an_eviction_never_acknowledged_is_carried_out_after_the_deadline(
    ram_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guest that does not acknowledge keeps host memory only until ACK_DEADLINE."""
    import host.memory.shm as shm

    b = backend(ram_dir, tmp_path / "swap", memory=2 * CHUNK, swap=4 * CHUNK)
    a = Guest(b, "a")
    a.use(0, 2 * CHUNK)
    c = Guest(b, "c")
    c.use(0, CHUNK)
    assert a.ram.take_evicted().ack_id == 1  # told, and never acknowledged
    assert a.blocks() == 2 * CHUNK
    monkeypatch.setattr(shm, "ACK_DEADLINE", 0.0)
    a.ram.take_evicted()  # the next tell finds the first overdue
    assert a.blocks() == CHUNK and a.agrees()
    store = a.ram.memory.store if a.ram.memory is not None else None
    assert isinstance(store, shm.ShmStore) and store.overdue == 1
    a.ram.touch([(0, CHUNK)])
    assert a.intact(0, 2 * CHUNK)
    for g in (a, c):
        g.close()
    b.close()


def test_a_move_that_fails_leaves_the_chunk_parked_and_told_again(
    ram_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import host.memory.shm as shm

    b = backend(ram_dir, tmp_path / "swap", memory=2 * CHUNK, swap=4 * CHUNK)
    a = Guest(b, "a")
    a.use(0, 2 * CHUNK)
    c = Guest(b, "c")
    c.use(0, CHUNK)
    ev = a.ram.take_evicted()

    def full(*_a: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shm, "_copy", full)
    with pytest.raises(OSError):
        a.ram.acknowledged(ev.ack_id)
    assert a.blocks() == 2 * CHUNK  # nothing punched: the bytes are where they were
    monkeypatch.undo()
    again = a.ram.take_evicted()
    assert again.ack_id == ev.ack_id + 1
    assert a.ram.acknowledged(again.ack_id) == CHUNK and a.agrees()
    a.ram.touch([(0, CHUNK)])
    assert a.intact(0, 2 * CHUNK)
    for g in (a, c):
        g.close()
    b.close()


def test_without_punch_a_reused_slot_never_leaks_another_chunks_bytes(
    ram_dir: Path, tmp_path: Path
) -> None:
    b = backend(ram_dir, tmp_path / "swap", memory=2 * CHUNK, swap=4 * CHUNK)
    assert b.swap is not None
    b.swap.punch = False  # a file system that cannot punch holes: slots are only reused
    a = Guest(b, "a")
    a.use(0, CHUNK)
    c = Guest(b, "c")
    c.ram.touch([(0, CHUNK)])
    c.map[0:PS] = c.stamp(0)  # one page written, the rest touched only
    d = Guest(b, "d")
    d.use(0, 8)  # over: a's chunk (the coldest) to swap
    a.hear()  # moved: a's stamps in slot 0
    a.ram.touch([(0, CHUNK)])  # back: slot 0 free again, a's bytes still in it
    assert c.ram.swapped_pages() == CHUNK  # that made room: c's chunk goes
    c.hear()  # moved to slot 0, over a's stale bytes
    c.ram.touch([(0, CHUNK)])
    assert c.map[0:PS] == c.stamp(0)
    assert c.map[PS : 2 * PS] == bytes(PS)  # not a's stamp
    for g in (a, c, d):
        g.close()
    b.close()


def test_a_swap_dir_made_by_the_host_goes_with_it_and_a_file_there_is_one_line(
    ram_dir: Path, tmp_path: Path
) -> None:
    model = HostMemory(CHUNK, CHUNK, 0.0, 0.0, 0)
    made = tmp_path / "made"
    b = ShmBackend(str(ram_dir), model=model, swap_dir=str(made))
    assert made.is_dir()
    b.close()
    assert not made.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    b = ShmBackend(str(ram_dir), model=model, swap_dir=str(kept))
    b.close()
    assert kept.is_dir()  # the user's own folder stays
    afile = tmp_path / "afile"
    afile.write_text("x")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    for bad in (afile, dangling):
        with pytest.raises(UsageError, match="exists and is not a folder"):
            ShmBackend(str(ram_dir), model=model, swap_dir=str(bad))
