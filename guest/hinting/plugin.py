"""Policies of your own: ``--policy package.module:ClassName`` or ``path/to/file.py:ClassName``.

A policy is a subclass of guest.hinting.base.Policy (the contract is in
docs/policies.md). A policy from outside is held to that contract here, so a
broken one cannot take the guest down or lose pages:

- its hook and its start()/stop() may raise: the error is recorded, the hook is
  switched off, the guest goes on without hinting;
- reporting a block it did not isolate is refused before anything reaches the
  device (Policy.report_batch checks every block; see ``check_batch``);
- the tasks it started in start() are cancelled and awaited when it stops (a
  task that died of an exception is reported), and blocks of a report still
  in flight stay isolated (the device may be discarding them), as the kernel's
  page_reporting_unregister() waits for a running pass;
- blocks it leaves isolated when it stops, and no device holds, are put back;
- one that keeps the event loop (never returns from its hook, a worker that
  never awaits) is seen by a watchdog thread, which names it and ends the
  process (``guest/hinting/watchdog.py``): nothing on the loop could.

Every break is in the run summary (``policy_errors``) and makes the guest exit 1.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Sequence
from typing import cast

from guest.hinting.base import Policy, PolicyRuleError, check_isolated
from guest.hinting.device import Block, ReportingDevice
from guest.hinting.watchdog import LoopWatchdog
from guest.mm.buddy import BuddyAllocator
from guest.mm.constants import ISOLATED, ORDER_MASK, STATE_MASK
from guest.mm.zone import Zone
from pagehint.config import BUILTIN_POLICIES, HintingConfig
from pagehint.errors import UsageError
from pagehint.plugins import is_plugin, load_class, said


@functools.lru_cache(maxsize=32)
def load_policy_class(spec: str) -> type[Policy]:
    """The Policy subclass ``spec`` names; UsageError (one line) if it cannot be had.
    Loaded once per process (a module's import-time code runs once)."""
    return cast(type[Policy], load_class(spec, "--policy", Policy, "guest.hinting.base.Policy"))


def check_policy_name(name: str, flag: str = "--policy") -> str:
    """A built-in name, or a plugin spec that loads."""
    if is_plugin(name):
        load_policy_class(name)
        return name
    if name not in BUILTIN_POLICIES:
        raise UsageError(
            f"{flag}: unknown value {name!r} (choose from {', '.join(BUILTIN_POLICIES)}, "
            f"or FILE.py:CLASS / MODULE:CLASS for your own)"
        )
    return name


class GuardedPolicy(Policy):
    """Runs an outside policy, catching what it breaks (see the module's docstring)."""

    def __init__(
        self,
        inner: type[Policy],
        cfg: HintingConfig,
        mm: BuddyAllocator,
        device: ReportingDevice | None,
    ) -> None:
        super().__init__(cfg, mm, device)
        self.name = cfg.policy
        self.errors = self.rule_errors  # one list: the inner's report_batch adds to it
        self._tasks: set[asyncio.Task[object]] = set()
        # Watched from its __init__ until it has stopped: its own code may keep the loop.
        self._watchdog = _watchdog(cfg.policy, inner)
        try:
            # The inner policy reports through a device that checks every batch
            # itself: a policy cannot skip the check by overriding it or by
            # calling the device directly.
            checked = None if device is None else CheckedDevice(device, mm, self.rule_errors)
            self.inner: Policy | None = inner(cfg, mm, checked)
        except (Exception, SystemExit, asyncio.CancelledError) as e:
            self.inner = None
            self._broke(f"__init__ raised {said(e)}")
            self._disarm()
            return
        # One set of counters: what the summary and metrics read is the inner's.
        self.stats = self.inner.stats
        self.on_ack = self.inner.on_ack
        self.problems = self.inner.problems
        self.kernel_work = self.inner.kernel_work
        self.inner.rule_errors = self.errors

    def _broke(self, what: str) -> None:
        self.errors.append(what)
        self.log(f"policy {self.cfg.policy} broke the rules: {what}")

    def start(self) -> None:
        if self.inner is None:
            return
        before = asyncio.all_tasks()
        try:
            self.inner.start()
        except (Exception, SystemExit, asyncio.CancelledError) as e:
            self._broke(f"start() raised {said(e)}")
            self.mm.set_hook(None)
            return
        finally:
            self._tasks = asyncio.all_tasks() - before
        hook, order = self.mm.hook, self.mm.hook_order
        if hook is not None:

            def guarded(zone: Zone, order: int) -> None:
                try:
                    hook(zone, order)
                except (Exception, SystemExit, asyncio.CancelledError) as e:
                    self._broke(f"its hook raised {said(e)}; hook off")
                    self.mm.set_hook(None)

            self.mm.set_hook(guarded, order)

    async def stop(self) -> None:
        if self.inner is not None:
            try:
                await asyncio.wait_for(self.inner.stop(), self.cfg.stop_grace + 5)
            except TimeoutError:
                self._broke("stop() did not return within the stop grace")
            except (Exception, SystemExit, asyncio.CancelledError) as e:
                self._broke(f"stop() raised {said(e)}")
            await self._end_tasks()
            self.abandoned = list(self.inner.abandoned)
            # A report still out: the device may be discarding its blocks now.
            if self.inner.in_flight:
                self.abandoned.extend(self.inner.in_flight)
                self._broke(
                    f"stopped with a report of {len(self.inner.in_flight)} blocks in flight; "
                    "they stay isolated"
                )
        self.mm.set_hook(None)
        self._return_isolated()
        self._disarm()

    def _disarm(self) -> None:
        if self._watchdog is not None:
            self._watchdog.disarm()
            self._watchdog = None

    async def _end_tasks(self) -> None:
        """Cancel and await what start() created; report what died of an exception."""
        for task in self._tasks:
            if not task.done():
                task.cancel()
        for task in self._tasks:
            try:
                await asyncio.wait_for(asyncio.shield(task), self.cfg.stop_grace + 5)
            except asyncio.CancelledError:
                pass
            except TimeoutError:
                self._broke("a task of its own ignored cancellation")
            except (Exception, SystemExit) as e:
                self._broke(f"a task of its own raised {said(e)}")

    def idle(self) -> bool:
        if self.inner is None:
            return True
        try:
            return bool(self.inner.idle())
        except (Exception, SystemExit, asyncio.CancelledError) as e:
            self._broke(f"idle() raised {said(e)}")
            return True

    def _return_isolated(self) -> None:
        """Put back what the policy left isolated (not what a device may still hold)."""
        held = {pfn for pfn, _ in self.abandoned}
        pg = self.mm.pg
        left = []
        pfn = 0
        while pfn < self.mm.nr_pages:
            # Starting at pfn 0 and stepping by block sizes visits only heads.
            flag = pg[pfn]
            order = flag & ORDER_MASK
            if flag & STATE_MASK == ISOLATED and pfn not in held:
                left.append((pfn, order))
            pfn += 1 << order
        for pfn, order in left:
            self.mm.putback(pfn, order)
        if left:
            pages = sum(1 << o for _, o in left)
            self._broke(f"left {len(left)} blocks ({pages} pages) isolated; put back")


def _watchdog(spec: str, inner: type[Policy]) -> LoopWatchdog | None:
    """A watchdog armed over the code of ``inner`` (the modules of its classes
    below Policy); None outside a running loop, where nothing can be held."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None
    base = set(Policy.__mro__)
    path, _, _cls = spec.rpartition(":")
    folders = [os.path.dirname(os.path.abspath(path))] if path.endswith(".py") else []
    dog = LoopWatchdog(spec, {c.__module__ for c in inner.__mro__ if c not in base}, folders)
    dog.arm()
    return dog


class CheckedDevice:
    """The device as an outside policy sees it: every report is checked first by
    check_isolated (not by the policy's own, overridable, methods)."""

    def __init__(self, device: ReportingDevice, mm: BuddyAllocator, errors: list[str]) -> None:
        self._device = device
        self._mm = mm
        self._errors = errors
        self.min_order = device.min_order
        self.capacity = device.capacity

    async def report(self, batch: Sequence[Block]) -> None:
        what = check_isolated(self._mm, batch)
        if what is not None:
            if what not in self._errors:
                self._errors.append(what)
            raise PolicyRuleError(what)
        await self._device.report(batch)


def parse_policies(value: object, flag: str = "--policy") -> tuple[str, ...]:
    """A policy or a comma list of policies, each one known (or loadable)."""
    policies = tuple(x.strip() for x in str(value).split(",") if x.strip())
    if not policies:
        raise UsageError(f"{flag}: give at least one policy")
    for pol in policies:
        check_policy_name(pol, flag)
    return policies
