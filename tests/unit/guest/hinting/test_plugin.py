"""Policies of your own: loaded by path or module, held to the contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from guest.hinting.device import LoopbackDevice
from guest.hinting.plugin import GuardedPolicy, check_policy_name, load_policy_class
from guest.mm import BuddyAllocator
from pagehint.config import BARE_MEMORY, HintingConfig
from pagehint.errors import UsageError

ROOT = Path(__file__).resolve().parents[4]
IDLE = ROOT / "examples" / "policies" / "idle.py"

BAD = '''
import asyncio
from guest.hinting.base import Policy
from guest.mm.constants import MAX_ORDER


class Quiet(Policy):
    def start(self): self.mm.set_hook(None)
    async def stop(self): pass
    def idle(self): return True


class ReportsUnisolated(Quiet):
    """Reports a free block straight off the free list."""
    def start(self):
        async def go():
            zone = self.mm.zones[-1]
            pfn = next(iter(zone.free_area[MAX_ORDER]))
            await self.report_batch([(pfn, MAX_ORDER)], mark=True, to_tail=True)
        self.task = asyncio.get_running_loop().create_task(go())
    async def stop(self):
        try:
            await self.task
        except Exception:
            pass


class LeavesIsolated(Quiet):
    def start(self):
        zone = self.mm.zones[-1]
        self.mm.isolate(next(iter(zone.free_area[MAX_ORDER])), MAX_ORDER)


class RaisingHook(Quiet):
    def start(self):
        def hook(zone, order): raise RuntimeError("boom")
        self.mm.set_hook(hook, 0)


class RaisingStart(Quiet):
    def start(self): raise ValueError("no")


class TaskRaises(Quiet):
    def start(self):
        async def go(): raise RuntimeError("worker died")
        self.task = asyncio.get_running_loop().create_task(go())


class ReportsTwice(ReportsUnisolated):
    def start(self):
        async def go():
            zone = self.mm.zones[-1]
            pfn = next(iter(zone.free_area[MAX_ORDER]))
            self.mm.isolate(pfn, MAX_ORDER)
            await self.report_batch([(pfn, MAX_ORDER), (pfn, MAX_ORDER)], mark=True, to_tail=True)
        self.task = asyncio.get_running_loop().create_task(go())


class NotAPolicy:
    pass
'''


def broken_run(source: str, spec: str, tmp_path: Path, *args: str) -> dict:  # type: ignore[type-arg]
    """Run a guest with a rule-breaking policy: exit 1, pages back, invariants ok."""
    bad = tmp_path / "bad.py"
    bad.write_text(source)
    r = guest("--policy", f"{bad}:{spec}", "--workload", "memhog", "--json", "--check", *args)
    assert r.returncode == 1, r.stderr
    s: dict = json.loads(r.stdout)  # type: ignore[type-arg]
    assert s["reported_bytes"] == 0 and s["invariants"] == "ok"
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("pagehint guest:")]
    assert "broke the rules" in line
    return s


def guest(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # the layout none: memhog's half of RAM fits beside these policies' own pages
        [
            sys.executable,
            "-m",
            "pagehint",
            "guest",
            "--ram",
            "128MiB",
            "--boot-layout",
            "none",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_loaded_by_path_and_by_module() -> None:
    by_path = load_policy_class(f"{IDLE}:IdlePolicy")
    assert by_path.__name__ == "IdlePolicy"
    sys.path.insert(0, str(ROOT))
    try:
        by_module = load_policy_class("examples.policies.idle:IdlePolicy")
    finally:
        sys.path.remove(str(ROOT))
    assert by_module.__name__ == "IdlePolicy"


def test_a_guarded_policy_shares_its_policys_kernel_work() -> None:
    """The workload yields to what the policy's own passes mark (guest/sched.py)."""
    spec = f"{IDLE}:IdlePolicy"
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    guarded = GuardedPolicy(
        load_policy_class(spec), HintingConfig(policy=spec), mm, LoopbackDevice()
    )
    assert guarded.inner is not None
    assert guarded.kernel_work is guarded.inner.kernel_work


def test_bad_specs_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(BAD)
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_here\n")
    for spec, message in [
        ("nosuch.module:Policy", "no module nosuch"),
        (f"{bad}:NotAPolicy", "is not a guest.hinting.base.Policy"),
        (f"{bad}:Missing", "no class Missing in"),
        (f"{tmp_path / 'none.py'}:X", "no file"),
        (f"{broken}:X", "importing it failed: no module no_such_module_here"),
        (f"{bad}:", "MODULE:CLASS"),
        ("spiral", "unknown value 'spiral' \\(choose from bitmap, reporting, none, or FILE"),
    ]:
        with pytest.raises(UsageError, match=message):
            check_policy_name(spec)


def test_the_example_policy_reports_once_idle() -> None:
    r = guest(
        "--policy", f"{IDLE}:IdlePolicy", "--workload", "memhog", "--delay", "0.5",
        "--duration", "6", "--json", "--check",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["reported_bytes"] > 0 and s["policy_errors"] == [] and s["invariants"] == "ok"


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        ("ReportsUnisolated", "without isolating it (it is free); nothing sent"),
        ("LeavesIsolated", "left 1 blocks (1024 pages) isolated; put back"),
        ("RaisingHook", "its hook raised RuntimeError: boom; hook off"),
        ("RaisingStart", "start() raised ValueError: no"),
        ("TaskRaises", "a task of its own raised RuntimeError: worker died"),
        ("ReportsTwice", "reported a block twice in one report; nothing sent"),
    ],
)
def test_a_policy_that_breaks_the_rules_is_caught(tmp_path: Path, cls: str, message: str) -> None:
    s = broken_run(BAD, cls, tmp_path, "--duration", "2.5")
    assert any(message in e for e in s["policy_errors"]), s["policy_errors"]
    assert s["isolated_bytes"] == 0  # the pages came back


BYPASS = """
import asyncio
from guest.hinting.base import Policy


class Quiet(Policy):
    def start(self):
        self.mm.set_hook(None)
        async def go():
            await asyncio.sleep(0.3)
            await self.attack()
        self.task = asyncio.get_running_loop().create_task(go())
    async def stop(self):
        try:
            await self.task
        except BaseException:
            pass
    def idle(self): return True


class DirectDevice(Quiet):
    async def attack(self):
        pfn = self.mm.alloc(0)  # an allocated page, straight to the device
        await self.device.report([(pfn, 0)])


class NoCheck(Quiet):
    def check_batch(self, batch): pass
    async def attack(self):
        pfn = self.mm.alloc(0)
        await self.report_batch([(pfn, 0)], mark=False, to_tail=True)


class StopHangs(Quiet):
    async def attack(self): pass
    async def stop(self): await asyncio.Event().wait()


class HookExits(Quiet):
    async def attack(self): pass
    def start(self):
        def hook(zone, order): raise SystemExit(3)
        self.mm.set_hook(hook, 0)
"""


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        ("DirectDevice", "without isolating it (it is allocated); nothing sent"),
        ("NoCheck", "without isolating it (it is allocated); nothing sent"),
        ("StopHangs", "stop() did not return within the stop grace"),
        ("HookExits", "its hook raised SystemExit: 3; hook off"),
    ],
)
def test_the_guard_cannot_be_bypassed(tmp_path: Path, cls: str, message: str) -> None:
    s = broken_run(BYPASS, cls, tmp_path, "--duration", "1.5", "--stop-grace", "0.5")
    assert any(message in e for e in s["policy_errors"]), s["policy_errors"]


def test_abstract_and_missing_classes_are_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is abstract"):
        check_policy_name("guest.hinting.base:Policy")
    mod = tmp_path / "exits.py"
    mod.write_text("import sys\nsys.exit(7)\n")
    with pytest.raises(UsageError, match="importing it failed: SystemExit: 7"):
        check_policy_name(f"{mod}:X")
    long = tmp_path / "long.py"
    long.write_text("raise RuntimeError('x' * 5000 + '\\nsecond line')\n")
    with pytest.raises(UsageError) as e:
        check_policy_name(f"{long}:X")
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


def test_a_policy_of_ones_own_logs_to_the_guests_log() -> None:
    # Its module is its own (FILE.py:CLASS), whose logger no handler hears: a
    # policy's lines go to one logger under the guest's.
    from guest.hinting.base import NonePolicy
    from guest.mm import BuddyAllocator
    from pagehint.config import HintingConfig
    from tests.logs import log_lines

    class Mine(NonePolicy):
        pass

    Mine.__module__ = "pagehint_policy_0123abcd"
    lines = log_lines()
    Mine(HintingConfig(policy="none"), BuddyAllocator(64 << 20, model=BARE_MEMORY), None).log(
        "hello from mine"
    )
    assert "hello from mine" in lines
