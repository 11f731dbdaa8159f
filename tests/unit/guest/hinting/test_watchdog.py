"""A policy that keeps the event loop is named and the guest ends, within the limit."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

from guest.hinting import watchdog
from guest.hinting.device import LoopbackDevice
from guest.hinting.plugin import GuardedPolicy
from guest.hinting.registry import make_policy
from guest.hinting.watchdog import LoopWatchdog
from guest.mm import BuddyAllocator
from pagehint.config import BARE_MEMORY, HintingConfig

SPIN = '''
import asyncio
from guest.hinting.base import Policy


class Quiet(Policy):
    def start(self): self.mm.set_hook(None)
    async def stop(self): pass
    def idle(self): return True


class SpinningHook(Quiet):
    """Its hook, called inside the workload's free(), never returns."""
    def start(self):
        def hook(zone, order):
            while True:
                pass
        self.mm.set_hook(hook, 0)


class HelperLoop(Quiet):
    """Its loop is in a helper module beside it, scheduled on the loop: no frame
    of the policy's own module is on the stack while it holds the loop."""
    def start(self):
        import os, sys
        sys.path.insert(0, os.path.dirname(__file__))
        import spinhelper
        asyncio.get_running_loop().call_later(0.2, spinhelper.crunch)


class SpinningWorker(Quiet):
    """A worker that never awaits."""
    def start(self):
        async def work():
            n = 0
            while True:
                n += 1
        self.task = asyncio.get_running_loop().create_task(work())
'''

# Booting a guest and reaching the workload's first free, on a busy machine.
SLACK = 15.0


def _policy_module(source: str) -> types.ModuleType:
    """Code that runs as a policy's: its frames' module is "mypolicy"."""
    module = types.ModuleType("mypolicy")
    exec(compile(source, "mypolicy.py", "exec"), module.__dict__)
    return module


HOLD = """
import time
def hold(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
"""


def _hold_here(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


async def test_it_names_the_policy_and_where_it_holds_the_loop() -> None:
    exits: list[int] = []
    dog = LoopWatchdog("mypolicy.py:Mine", {"mypolicy"}, limit=0.3, beat=0.05, exit=exits.append)
    dog.arm()
    try:
        _policy_module(HOLD).hold(1.5)
    finally:
        dog.disarm()
    assert exits == [1]
    assert dog.fired is not None
    assert dog.fired.startswith("pagehint guest: policy mypolicy.py:Mine has kept the event loop")
    assert "(in hold, mypolicy.py:" in dog.fired


async def test_a_loop_held_by_other_code_or_given_back_in_time_is_left_alone() -> None:
    exits: list[int] = []
    dog = LoopWatchdog("p.py:P", {"mypolicy"}, limit=0.3, beat=0.05, exit=exits.append)
    dog.arm()
    try:
        _hold_here(1.0)  # not the policy's code: a long step of our own
        for _ in range(10):
            _policy_module(HOLD).hold(0.1)  # the policy's, but given back each time
            await asyncio.sleep(0.06)
    finally:
        dog.disarm()
    assert exits == [] and dog.fired is None


async def test_our_long_step_calling_a_quick_hook_many_times_is_left_alone() -> None:
    # A long step of ours (a big free, a trace's set-up) calls the policy's hook once
    # per free: the loop does not turn, and most samples land inside some hook call,
    # but no one call lasts. Only one call that lasts past the limit is the policy's.
    exits: list[int] = []
    dog = LoopWatchdog("p.py:P", {"mypolicy"}, limit=0.3, beat=0.05, exit=exits.append)
    hook = _policy_module(HOLD).hold
    dog.arm()
    try:
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            hook(0.004)  # 4 ms in the hook, a few µs of ours between calls
    finally:
        dog.disarm()
    assert exits == [] and dog.fired is None


def test_the_thread_ends_with_its_loop_or_when_disarmed() -> None:
    # By identity: an earlier test's watchdog in this worker may end meanwhile.
    def threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("pagehint-watchdog")}

    before = threads()

    async def arm_and_leave() -> LoopWatchdog:
        dog = LoopWatchdog("p.py:P", {"mypolicy"}, limit=0.2, beat=0.02, exit=lambda _: None)
        dog.arm()
        return dog

    dog = asyncio.run(arm_and_leave())  # a run that never disarmed it
    deadline = time.monotonic() + 5
    while threads() - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not threads() - before and dog.fired is None


async def test_only_policies_from_outside_are_watched(tmp_path: Path) -> None:
    mm = BuddyAllocator(64 << 20, model=BARE_MEMORY)
    device = LoopbackDevice()
    for name in ("bitmap", "reporting"):
        builtin = make_policy(HintingConfig(policy=name), mm, device)
        assert not isinstance(builtin, GuardedPolicy)
    mine = tmp_path / "mine.py"
    mine.write_text(SPIN)
    guarded = make_policy(HintingConfig(policy=f"{mine}:Quiet"), mm, device)
    assert isinstance(guarded, GuardedPolicy)
    dog = guarded._watchdog
    assert dog is not None and dog.policy == f"{mine}:Quiet" and len(dog.modules) == 1
    guarded.start()
    await guarded.stop()
    assert guarded._watchdog is None and dog._done.is_set()


def _spinning_guest(tmp_path: Path, cls: str) -> subprocess.Popen[str]:
    spin = tmp_path / "spin.py"
    spin.write_text(SPIN)
    (tmp_path / "spinhelper.py").write_text("def crunch():\n    while True:\n        pass\n")
    argv = ["guest", "--ram", "128MiB", "--workload", "memhog", "--duration", "120", "--quiet"]
    return subprocess.Popen(
        [sys.executable, "-m", "pagehint", *argv, "--policy", f"{spin}:{cls}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ends_naming(p: subprocess.Popen[str], cls: str, where: str, started: float) -> None:
    try:
        _, err = p.communicate(timeout=watchdog.LIMIT + SLACK)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert time.monotonic() - started < watchdog.LIMIT + SLACK
    assert p.returncode == 1, err
    (line,) = err.strip().splitlines()
    assert f"spin.py:{cls} has kept the event loop for" in line and f"(in {where}," in line, line


def test_a_hook_that_never_returns_ends_the_guest(tmp_path: Path) -> None:
    started = time.monotonic()
    p = _spinning_guest(tmp_path, "SpinningHook")
    _ends_naming(p, "SpinningHook", "SpinningHook.start.<locals>.hook", started)


def test_a_worker_that_never_awaits_ends_the_guest_sigterm_or_not(tmp_path: Path) -> None:
    started = time.monotonic()
    p = _spinning_guest(tmp_path, "SpinningWorker")
    time.sleep(2.0)
    os.kill(p.pid, signal.SIGTERM)  # its handler runs on the loop: never, here
    _ends_naming(p, "SpinningWorker", "SpinningWorker.start.<locals>.work", started)


def test_a_loop_in_a_helper_module_beside_the_plug_in_ends_the_guest(tmp_path: Path) -> None:
    # Found from outside: a loop in a module the plug-in imported from its own folder
    # was never seen (only the policy class's own module was watched), and the guest
    # ignored --duration and SIGTERM until SIGKILL.
    started = time.monotonic()
    p = _spinning_guest(tmp_path, "HelperLoop")
    _ends_naming(p, "HelperLoop", "crunch", started)
