"""Running one balloon controller on the host, guarded.

Every ``period`` the runner takes a snapshot of the host (``view``), hands it to
the controller's ``decide`` in a thread of its own, checks the answer and sets
the targets it names (host/balloon.py ``set_target``, as ``pagehint balloon``
does). A controller of your own is held to its contract as a policy plug-in is
(guest/hinting/plugin.py):

- ``decide`` raising, answering something that is not a mapping, or not
  answering within its period (or 10 s, whichever is longer) switches the
  controller off: said once, counted, the host goes on serving with the
  targets as they are. It never runs on the host's event loop, so one that
  never returns keeps a daemon thread, never the host.
- an entry for a guest it was not shown, or a size that is not a whole,
  positive number of bytes, is refused (counted, said rate-limited); a size
  over the guest's RAM is taken as its RAM (as QEMU's balloon command); the
  rest of the answer is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar, cast

from host.balloon import set_target
from host.control.base import Controller, GuestView, HostView
from host.control.mom import MomBalloon
from host.control.pressure import SenpaiPressure
from host.control.proxmox import ProxmoxAutoBalloon
from host.sessions import SessionTable
from pagehint.errors import UsageError
from pagehint.plugins import is_plugin, load_class, said
from pagehint.ratelog import RateLimitedLog
from virtqueue.contract import PAGE_SIZE

if TYPE_CHECKING:
    from host.device import BalloonDevice

log = logging.getLogger(__name__)
T = TypeVar("T")

BUILTIN_CONTROLLERS: dict[str, type[Controller]] = {
    "mom": MomBalloon,
    "proxmox": ProxmoxAutoBalloon,
    "pressure": SenpaiPressure,
}
MIN_DECIDE_TIMEOUT = 10.0  # seconds a decide() may take at least
# A controller's period: no faster than a tenth of a second (the stats it reads
# come every second by default, and each call is a thread of its own), at most
# an hour.
MIN_PERIOD, MAX_PERIOD = 0.1, 3600.0


@functools.lru_cache(maxsize=8)
def controller_class(spec: str) -> type[Controller]:
    """A built-in controller's class, or a plug-in's (MODULE:CLASS, FILE.py:CLASS)."""
    if is_plugin(spec):
        return cast(
            type[Controller],
            load_class(spec, "--controller", Controller, "host.control.base.Controller"),
        )
    cls = BUILTIN_CONTROLLERS.get(spec)
    if cls is None:
        raise UsageError(
            f"--controller: unknown value {spec!r} (choose from "
            f"{', '.join(BUILTIN_CONTROLLERS)}, or FILE.py:CLASS / MODULE:CLASS for your own)"
        )
    return cls


def make_controller(spec: str) -> tuple[Controller, float]:
    """The controller, built, and its period (read once: a decide() that changes it
    later changes nothing); its own failure to build is one line."""
    cls = controller_class(spec)
    try:
        c = cls()
        period = getattr(c, "period", None)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # its own __init__ (or period) failed, or exited
        raise UsageError(f"--controller {spec}: building it failed: {said(e)}") from None
    if inspect.iscoroutinefunction(getattr(c, "decide", None)):
        raise UsageError(f"--controller {spec}: decide() must be a plain function, not async")
    if not (isinstance(period, int | float) and not isinstance(period, bool)):
        raise UsageError(f"--controller {spec}: its period must be a number of seconds")
    if not MIN_PERIOD <= period <= MAX_PERIOD:
        raise UsageError(
            f"--controller {spec}: its period must be {MIN_PERIOD:g} to {MAX_PERIOD:g} s"
        )
    return c, float(period)


def host_view(device: BalloonDevice, t: float, min_bytes: int) -> HostView | None:
    """The snapshot a controller is shown (None without the host memory model)."""
    model = device.backend.model
    if model is None:
        return None
    guests = []
    for s in device.table.sessions.values():
        b = s.balloon
        if b is None:
            continue
        major, _ = s.ram.faults()
        guests.append(
            GuestView(
                guest_id=s.guest_id,
                ram_bytes=s.ram_bytes,
                min_bytes=min(min_bytes, s.ram_bytes),
                target_bytes=b.target_pages * PAGE_SIZE,
                actual_bytes=b.actual_pages * PAGE_SIZE,
                stats=dict(b.stats),
                stats_age_s=None if not b.stats_at else time.monotonic() - b.stats_at,
                resident_bytes=s.ram.resident_pages() * PAGE_SIZE,
                swapped_bytes=s.ram.swapped_pages() * PAGE_SIZE,
                major_faults=major,
                stall_seconds=s.ram.stall_seconds(),
            )
        )
    lazy = sum(g.lazy for g in model.guests)
    return HostView(
        t=t,
        memory_bytes=model.memory_pages * PAGE_SIZE,
        used_bytes=model.used * PAGE_SIZE,
        lazy_bytes=lazy * PAGE_SIZE,
        swap_bytes=model.swap_pages * PAGE_SIZE,
        swap_used_bytes=model.swap_used * PAGE_SIZE,
        swap_ins=model.swap_ins,
        swap_outs=model.swap_outs,
        guests=tuple(guests),
    )


@dataclass
class ControllerRecord:
    """What the controller did (host metrics, the runner's own lines)."""

    decisions: int = 0  # calls of decide() answered
    targets_set: int = 0  # targets it changed
    refused: Counter[str] = field(default_factory=Counter)  # entries refused, by why
    broken: str = ""  # why it was switched off ("": it runs)


def decide_checked(
    decide: Callable[[HostView], object], view: HostView
) -> tuple[dict[str, int], Counter[str], str]:
    """decide(view) and its answer checked, both in the worker thread: the answer
    may be a controller's own objects (a mapping subclass, an int subclass), whose
    code must not run on the host's loop. Only plain ints and our own guest ids
    come back."""
    return check_answer(decide(view), view)


def check_answer(answer: object, view: HostView) -> tuple[dict[str, int], Counter[str], str]:
    """(the entries to apply, refusals by reason, one example line) for an answer.

    As QEMU's balloon command (system/balloon.c qmp_balloon, virtio_balloon_to_target):
    a size of 0 or less is refused, one over the guest's RAM is taken as its RAM."""
    if not isinstance(answer, Mapping):
        raise TypeError(f"decide() answered a {type(answer).__name__}, not a mapping")
    by_id = {g.guest_id: g for g in view.guests}
    ok: dict[str, int] = {}
    refused: Counter[str] = Counter()
    example = ""
    for gid, mem in answer.items():
        g = by_id.get(str(gid)) if isinstance(gid, str) else None
        why = _entry_problem(g, mem)
        if why:
            refused[why] += 1
            example = example or f"{str(gid)[:64]!r}: {str(mem)[:32]} ({why})"
            continue
        assert g is not None
        ok[g.guest_id] = min(int(mem), g.ram_bytes)
    return ok, refused, example


def _entry_problem(g: GuestView | None, mem: object) -> str:
    if g is None:
        return "unknown_guest"
    if isinstance(mem, bool) or not isinstance(mem, int):
        return "not_whole_bytes"
    if mem <= 0:
        return "out_of_range"
    return ""


class ControllerRunner:
    """One controller on one host (see the module)."""

    def __init__(
        self,
        device: BalloonDevice,
        controller: Controller,
        min_bytes: int,
        spec: str,
        clock: Callable[[], float] = time.monotonic,
        period: float | None = None,
    ) -> None:
        self.device = device
        self.controller = controller
        self.period = float(controller.period) if period is None else period
        self.stopping = False
        self.min_bytes = min_bytes
        self.spec = spec
        self.clock = clock
        self.t0 = clock()
        self.record = ControllerRecord()
        self.problems = RateLimitedLog(log)

    @property
    def table(self) -> SessionTable:
        return self.device.table

    async def run(self) -> None:
        while not self.record.broken and not self.stopping:
            await asyncio.sleep(self.period)
            try:
                await self.step()
            except Exception as e:  # the runner's own failure: said, never silent
                self._broke(f"the runner failed: {said(e)}")

    def stop(self) -> None:
        """No further step (the host stops): set before the task is cancelled, so a
        cancellation that Python 3.11's wait_for drops still ends the loop."""
        self.stopping = True

    async def step(self) -> None:
        """One call of decide() and what it answered applied."""
        view = host_view(self.device, round(self.clock() - self.t0, 3), self.min_bytes)
        if view is None or self.record.broken:
            return
        timeout = max(MIN_DECIDE_TIMEOUT, self.period)
        decide = self.controller.decide
        try:
            ok, refused, example = await _in_thread(
                lambda v: decide_checked(decide, v), view, timeout
            )
        except TimeoutError:
            self._broke(f"decide() did not answer within {timeout:g} s")
            return
        except Exception as e:
            self._broke(f"decide() {'raised ' if not isinstance(e, TypeError) else ''}{said(e)}")
            return
        self.record.decisions += 1
        if refused:
            self.record.refused.update(refused)
            self.problems.note("refused", f"controller {self.spec}: entry refused: {example}")
        by_id = {g.guest_id: g for g in view.guests}
        for gid, mem in ok.items():
            g = by_id[gid]
            balloon = g.ram_bytes - mem
            if balloon == g.target_bytes:
                continue
            if set_target(self.table, gid, balloon) is not None:
                self.record.targets_set += 1
                log.debug(f"controller {self.spec}: {gid} to {mem >> 20} MiB of memory")

    def _broke(self, why: str) -> None:
        self.record.broken = why
        log.warning(f"controller {self.spec} switched off: {why}; targets stay as they are")


async def _in_thread(fn: Callable[[HostView], T], view: HostView, timeout: float) -> T:
    """fn(view) in a daemon thread: one that never returns keeps the thread, not
    the loop, and does not hold up the host's exit (asyncio.to_thread's executor
    is waited for at the loop's close)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(cast(T, result))

    def work() -> None:
        try:
            result, error = fn(view), None
        except BaseException as e:  # handed to the loop, said there
            result, error = None, e if isinstance(e, Exception) else RuntimeError(said(e))
        with contextlib.suppress(RuntimeError):  # the host's loop closed meanwhile
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="controller", daemon=True).start()
    return await asyncio.wait_for(fut, timeout)
