"""`pagehint migrate`: how much free page hinting saves a snapshot, and the race.

One host (shm: the guest's RAM is a real file) and one guest. The guest fills
its RAM (``--ram``), frees ``--free`` of it, and then stays idle or, with
``--churn``, allocates and frees at random (guest/workloads: churn). Once it is
ready the host snapshots it once per mode (host/migration.py): without hints,
with hints, and (``--unsafe``) with hints taken as final; after each, the guest
checks the image against its stamps. ``--churn``: the guest takes back what it
freed, 4 MiB a second, so pages it hinted are written again during the
snapshots (once the run's DONE gave them back). Per mode: pages copied, pages
skipped, rounds, downtime, and the pages the image lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import grpc

from lab.pipeline import write_report
from lab.procs import ProcessGroup
from pagehint.errors import UsageError
from pagehint.schema import GuestSummary
from virtqueue import codec

MODES = ("no-hints", "hints", "hints-unsafe")
READY_TIMEOUT = 120.0  # seconds for the guest to fill and free its RAM
SNAPSHOT_TIMEOUT = 300.0
SLACK = 8 << 20  # left unallocated by the fill, so allocation never fails
GROW_STEP = 4 << 20  # --churn takes back freed memory this much at a time ...
GROW_PAUSE = 1.0  # ... every second: 600 MiB lasts the whole run of three snapshots


@dataclass(frozen=True)
class MigrateConfig:
    ram_bytes: int
    free_bytes: int
    modes: tuple[str, ...]
    churn: bool
    out: Path
    max_rounds: int = 0


class ModeRow(TypedDict):
    mode: str
    pages_copied: int
    pages_skipped: int
    zero_pages: int
    rounds: int
    downtime_ms: float
    total_ms: float
    hinted_pages: int
    pages_checked: int
    data_loss_pages: int


@dataclass
class MigrateResult:
    rows: list[ModeRow] = field(default_factory=list)
    guest: GuestSummary | None = None
    errors: list[str] = field(default_factory=list)


def scenario_text(cfg: MigrateConfig) -> str:
    """Fill, free, ready; then idle, or (churn) take back what was freed, GROW_STEP
    every GROW_PAUSE seconds: memory the guest freed (and hinted) is written again
    while the snapshots run. It is never freed again: a guest's allocator hands
    out what it freed last first, so a cycle that freed and took back its own
    pages would never touch the hinted ones (given back at DONE, they are the
    last freed only until the guest frees something else)."""
    keep = cfg.ram_bytes - cfg.free_bytes - SLACK
    steps = [("alloc", f'name = "keep"\nsize = "{keep}B"')]
    if cfg.free_bytes:
        steps += [("alloc", f'name = "tmp"\nsize = "{cfg.free_bytes}B"'), ("free", 'name = "tmp"')]
    steps.append(("mark", 'label = "ready"'))
    if cfg.churn:
        for i in range(max(0, cfg.free_bytes // GROW_STEP - 1)):
            steps.append(("alloc", f'name = "g{i}"\nsize = "{GROW_STEP}B"'))
            steps.append(("sleep", f"seconds = {GROW_PAUSE}"))
    steps.append(("sleep", "seconds = 3600"))
    body = "\n\n".join(f'[[steps]]\nop = "{op}"\n{f}' for op, f in steps)
    return f'name = "migrate"\n\n{body}\n'


def check(cfg: MigrateConfig) -> None:
    if cfg.free_bytes + SLACK >= cfg.ram_bytes:
        raise UsageError("--free: leave some of --ram allocated (at least 8 MiB more than --free)")


def _ready(timeline: Path) -> bool:
    try:
        return '"ready"' in timeline.read_text()
    except OSError:
        return False


def row(mode: str, r: codec.SnapshotResult) -> ModeRow:
    return ModeRow(
        mode=mode,
        pages_copied=r.pages_copied,
        pages_skipped=r.pages_skipped,
        zero_pages=r.zero_pages,
        rounds=r.rounds,
        downtime_ms=round(r.downtime_us / 1000, 1),
        total_ms=round(r.total_us / 1000, 1),
        hinted_pages=r.hinted_pages,
        pages_checked=r.pages_checked,
        data_loss_pages=r.pages_lost,
    )


def run_migrate(cfg: MigrateConfig) -> MigrateResult:
    shm = cfg.out / "shm"
    shm.mkdir(parents=True, exist_ok=True)
    scenario = cfg.out / "migrate.toml"
    scenario.write_text(scenario_text(cfg))
    timeline = cfg.out / "guest.timeline.jsonl"
    result = MigrateResult()
    group = ProcessGroup(cfg.out)
    try:
        host_args = ["--backend", "shm", "--shm-dir", str(shm), "--free-page-hint"]
        addr, host = group.start_host([*host_args, "--deflate-on-oom", "--quiet"])
        guest = group.start_guest(
            ["--host", addr, "--shm-dir", str(shm), "--id", "g1", "--ram", str(cfg.ram_bytes),
             "--policy", "none", "--scenario", str(scenario), "--timeline", str(timeline),
             "--check", "--quiet"],
            "guest",
        )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT
        while not _ready(timeline):
            if guest.poll() is not None or time.monotonic() > deadline:
                raise UsageError("the guest did not get ready (see guest.log)")
            time.sleep(0.1)
        with grpc.insecure_channel(addr) as ch:
            stub = codec.stub(ch)
            for mode in cfg.modes:
                opts = codec.SnapshotOptions(
                    "g1", mode != "no-hints", mode == "hints-unsafe", cfg.max_rounds
                )
                try:
                    reply = stub.Snapshot(
                        codec.encode_snapshot_request(opts), timeout=SNAPSHOT_TIMEOUT
                    )
                except grpc.RpcError as e:
                    result.errors.append(f"{mode}: {e.code().name}: {e.details()}")
                    continue
                result.rows.append(row(mode, codec.decode_snapshot_report(reply)))
        group.stop(guest)
        try:
            result.guest = group.guest_summary(guest, "guest", 30)
        except UsageError as e:
            result.errors.append(str(e))
        if host.poll() is not None:
            result.errors.append(f"host exited with {host.returncode}")
    finally:
        group.close()
    write_report(cfg.out, {"modes": result.rows, "errors": result.errors})
    return result
