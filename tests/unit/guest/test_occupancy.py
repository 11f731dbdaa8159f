"""A guest near full: hinting must not cost the workload allocations (vs no hinting)."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest.hinting.device import LoopbackDevice
from guest.runtime import GuestRuntime
from pagehint.config import BARE_MEMORY, GuestConfig, HintingConfig

TIGHT = """
name = "tight"
[[steps]]
op = "churn"
seconds = 0.6
occupancy = 0.9
rate = 20000
name = "base"
[[steps]]
op = "repeat"
count = 6
steps = [
  {op = "alloc", name = "hog", size = "12MiB", order = 9},
  {op = "sleep", seconds = 0.05},
  {op = "free", name = "hog"},
  {op = "churn", seconds = 0.25, occupancy = 0.95, rate = 20000, name = "base"},
]
"""


async def run(policy: str, scenario: Path) -> dict[str, object]:
    cfg = GuestConfig(
        ram_bytes=256 << 20,
        scenario=str(scenario),
        seed=5,
        check=True,
        hinting=HintingConfig(policy=policy, threshold=4, delay=0.2),
        # The plain buddy: with the kernel's allocation watermarks and a device that
        # holds reports 0.2 s, isolated pages fail allocations a kernel would have
        # waited for in reclaim (the model has no reclaim to wait in).
        memory=BARE_MEMORY,
    )
    # A slow device: reports stay out (isolated) while the workload runs at ~95%.
    device = LoopbackDevice(capacity=cfg.hinting.effective_capacity(), delay=0.2)
    return await GuestRuntime(cfg, device=device).run()


@pytest.mark.parametrize("policy", ["bitmap", "reporting"])
async def test_hinting_near_full_costs_no_allocation_failures(policy: str, tmp_path: Path) -> None:
    scenario = tmp_path / "tight.toml"
    scenario.write_text(TIGHT)
    baseline = await run("none", scenario)
    s = await run(policy, scenario)
    assert s["invariants"] == "ok"
    assert s["alloc_failures"] <= baseline["alloc_failures"], (s, baseline)
    if policy == "bitmap":
        assert s["reported_bytes"] > 0, "the test must make the policy isolate at ~95%"
