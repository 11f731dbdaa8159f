"""The sim ledger against the kernel's own count: one guest history, two backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.procs import Procs

SCENARIO = Path(__file__).resolve().parent / "scenarios" / "differential.toml"
RAM = 1 << 30


def marks(procs: Procs, tmp_path: Path, backend: str) -> dict[str, int]:
    addr, _ = procs.host("--backend", backend)
    tl = tmp_path / f"{backend}.jsonl"
    s = procs.finish(
        procs.guest(
            "--host", addr, "--ram", "1GiB", "--policy", "reporting", "--delay", "0.5",
            "--scenario", str(SCENARIO), "--timeline", str(tl), "--seed", "3", "--id", backend,
        ),
        timeout=120,
    )  # fmt: skip
    assert s["backend"] == backend
    rows = [json.loads(x) for x in tl.read_text().splitlines()]
    return {r["mark"]: r["host_resident_bytes"] for r in rows if "mark" in r}


@pytest.mark.serial  # the ledger and the kernel are read at one instant: load skews it
def test_sim_ledger_matches_the_kernel_at_every_mark(procs: Procs, tmp_path: Path) -> None:
    sim = marks(procs, tmp_path, "sim")
    shm = marks(procs, tmp_path, "shm")
    assert set(sim) == set(shm) == {"allocated", "stride-2-freed", "freed", "churned"}
    for label in sim:
        diff = abs(sim[label] - shm[label])
        assert diff <= RAM // 100, (label, sim[label] >> 20, shm[label] >> 20)
