"""A watchdog for outside policies that never give the event loop back.

A policy runs on the guest's one event loop (docs/policies.md, rule 5). One
that never returns to it — ``while True: pass`` in its hook, a worker that
never awaits — stops everything else the loop runs: the workload, the driver,
``--duration``, and the SIGTERM/Ctrl-C handlers, which run on the loop too. No
code on the loop can interrupt it, so the check runs in a thread of its own:
the loop sets a heartbeat every ``BEAT`` seconds, and the thread looks as
often at where the loop's thread is. When the loop has stayed inside the
policy's own code, without turning, for ``LIMIT`` seconds, the watchdog writes
one line naming the policy and where it is stuck, and ends the process with
exit status 1 (as for a policy that broke any other rule).

Only outside policies are watched (GuardedPolicy arms it): the built-ins are
this project's code, held to rule 5 by their tests, and a loop held up by our
own long step (a big trace's replay set-up) is not a policy's fault: the
stack decides, not the clock alone.

A policy stuck in C code that never releases the GIL cannot be seen by any
thread; one stuck in Python code, or sleeping, or waiting on a lock, can.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType

# A policy that keeps the loop this long has already stopped the workload, the
# driver, --duration and signals for that long. One that keeps rule 5 holds it
# for one step of its own at a time (a hook, a batch: milliseconds), so 5 s
# is no busy moment misread, even on a loaded machine; and it is inside the
# 10 s `docker stop` waits after SIGTERM before it kills (docker-compose.yml
# gives 15 s), so a stuck guest ends with a line saying why, not a SIGKILL.
LIMIT = 5.0
BEAT = 0.25  # seconds between heartbeats (and between the thread's looks)
# The thread itself woke this much later than asked: the whole process was
# stopped (SIGSTOP, a suspended machine), not just the loop; start counting again.
SUSPENDED = 2.0
EXIT_STATUS = 1  # a policy that broke a rule (docs/policies.md)
FLUSH_WAIT = 1.0  # at most this long for log handlers to flush before exiting


class LoopWatchdog:
    """Ends the process if the event loop is held for ``limit`` seconds inside
    code of ``modules`` (the policy's). Arm on the loop's thread; disarm when the
    policy has stopped."""

    def __init__(
        self,
        policy: str,
        modules: Iterable[str],
        folders: Iterable[str] = (),
        limit: float = LIMIT,
        beat: float = BEAT,
        exit: Callable[[int], None] = os._exit,
    ) -> None:
        self.policy = policy
        self.modules = frozenset(modules)
        # A plug-in given as FILE.py:CLASS: its folder's code is the plug-in's too
        # (a helper module beside it, imported by it, that holds the loop).
        self.folders = tuple(str(Path(f).resolve()) for f in folders)
        self.limit = limit
        self.beat = beat
        self._exit = exit
        self._last = time.monotonic()
        self._done = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._ident = 0
        self.fired: str | None = None  # the line written, once it fired

    def arm(self) -> None:
        """Start watching the running loop (call on its thread)."""
        self._loop = asyncio.get_running_loop()
        self._ident = threading.get_ident()
        self._last = time.monotonic()
        self._handle = self._loop.call_later(self.beat, self._heartbeat)
        name = f"pagehint-watchdog {self.policy}"
        threading.Thread(target=self._watch, name=name, daemon=True).start()

    def disarm(self) -> None:
        self._done.set()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _heartbeat(self) -> None:
        self._last = time.monotonic()
        if not self._done.is_set() and self._loop is not None:
            self._handle = self._loop.call_later(self.beat, self._heartbeat)

    def _watch(self) -> None:
        looked = time.monotonic()
        # When a look first found the loop, not turned since, in the policy's
        # code: a long step of ours just before it (a big trace's set-up, which
        # frees into the policy's hook) is not counted against the policy.
        since: float | None = None
        # The policy's outermost frame when counting began: a long step of ours
        # that calls the policy's hook many times (each call quick) is many
        # calls, each a new frame, not one the policy kept; only one call that
        # lasts counts. (Held, so its id cannot be reused by a later frame.)
        held: FrameType | None = None
        while not self._done.wait(self.beat):
            now = time.monotonic()
            if now - looked > self.beat + SUSPENDED:
                self._last = now  # the process was stopped, not the loop
            looked = now
            loop = self._loop
            if loop is None or loop.is_closed() or not loop.is_running():
                return  # the loop ended (a run that never stopped its policy)
            found = self._where() if now - self._last > 2 * self.beat else None
            if found is None:
                since, held = None, None
                continue
            outer, where = found
            if since is None or since < self._last or outer is not held:
                since, held = now, outer
            if now - since >= self.limit:
                self._fire(now - since, where)
                return

    def _where(self) -> tuple[FrameType, str] | None:
        """The loop thread's outermost frame in the policy's code, and where it is
        there (its innermost such frame); None if it is not in the policy's code."""
        frame: FrameType | None = sys._current_frames().get(self._ident)
        inner: str | None = None
        outer: FrameType | None = None
        while frame is not None:
            module = frame.f_globals.get("__name__")
            if self._policys(module if isinstance(module, str) else "", frame.f_code.co_filename):
                if inner is None:
                    code = frame.f_code
                    inner = f"{code.co_qualname}, {Path(code.co_filename).name}:{frame.f_lineno}"
                outer = frame
            frame = frame.f_back
        if outer is None or inner is None:
            return None
        return outer, inner

    def _policys(self, module: str, filename: str) -> bool:
        """Whether code is the policy's: its modules and theirs, and code from the
        plug-in file's own folder."""
        if any(module == m or module.startswith(m + ".") for m in self.modules):
            return True
        if not self.folders or not filename.startswith("/"):
            return False
        folder = os.path.dirname(filename)
        return any(folder == f or folder.startswith(f + os.sep) for f in self.folders)

    def _fire(self, held: float, where: str) -> None:
        line = (
            f"pagehint guest: policy {self.policy} has kept the event loop for {held:.0f} s "
            f"(in {where}): a policy must give it back (docs/policies.md, rule 5); "
            f"the guest stops here, exit {EXIT_STATUS}\n"
        )
        self.fired = line.rstrip("\n")
        _flush_logs()
        with contextlib.suppress(OSError):
            os.write(2, line.encode("utf-8", "replace"))
        # os._exit, not sys.exit or a stop request: the loop's thread is inside
        # the policy's code and will not come back to run a handler, a finally
        # or an atexit hook, and this thread cannot interrupt it. Nothing else
        # is safe: the summary and the allocator are the loop's, mid-change.
        self._exit(EXIT_STATUS)


def _flush_logs() -> None:
    """Flush what the log handlers and stdout hold, waiting at most FLUSH_WAIT: a
    stream the stuck thread holds (a full pipe) must not keep the process alive."""

    def flush() -> None:
        handlers = list(logging.getLogger().handlers)
        for name in list(logging.root.manager.loggerDict):
            handlers.extend(getattr(logging.root.manager.loggerDict[name], "handlers", []))
        for handler in handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()

    helper = threading.Thread(target=flush, name="pagehint-watchdog-flush", daemon=True)
    helper.start()
    helper.join(FLUSH_WAIT)
