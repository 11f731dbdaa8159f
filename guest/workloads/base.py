"""What a workload runs against: memory, a clock, marks, and a stop signal."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from guest.memory import GuestMemory
from guest.mm.constants import PAGE_SIZE
from guest.sched import POLL_S, KernelWork
from guest.workloads import share
from guest.workloads.held import HeldBlocks

# Yield to the event loop every this many allocator operations, so the hinting
# worker and the driver get to run while a workload is busy...
YIELD_EVERY = 512
# ...and after this much work, whichever comes first: an operation that writes a
# page of a shared-memory RAM file costs 15-30 us here, so 512 of them held the
# loop 8-15 ms, and each await of a reporting pass waited that long behind the
# workload (a pass that began while a region was being touched came 60-90 ms
# late, where the kernel's kworker preempts the workload when woken: see
# guest/sched.py, which now also lets a pass under way go first). A yield costs
# 3 us on uvloop (measured here), so 1 ms of work between yields costs < 1%.
YIELD_AFTER_S = 0.001
# The clock is read every 2**CLOCK_SHIFT (32) operations (a read costs ~0.2 us, an
# operation 2-9 us), so a yield comes within max(1 ms, 32 operations).
CLOCK_SHIFT = 5


@dataclass
class WorkloadStats:
    alloc_ops: int = 0
    alloc_failures: int = 0
    free_ops: int = 0
    marks: list[tuple[float, str]] = field(default_factory=list)


class WorkloadContext:
    """Memory plus named groups of held blocks, marks and a stop event."""

    def __init__(
        self,
        memory: GuestMemory,
        seed: int = 0,
        on_mark: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        kernel: KernelWork | None = None,
    ) -> None:
        self.memory = memory
        self.rng = random.Random(seed)
        self.stats = WorkloadStats()
        self.groups: dict[str, HeldBlocks] = {}
        self.stop = asyncio.Event()
        self._on_mark = on_mark
        self._clock = clock
        self._t0 = clock()
        self._ops = 0
        self._next_check = 1 << CLOCK_SHIFT  # op count at which to look at the clock
        self._next_yield = YIELD_EVERY  # op count at which to yield, at the latest
        self._resumed = time.perf_counter()
        self._ops_resumed = 0  # the op count at _resumed
        # The policy's worker, which runs ahead of the workload while under way
        # (guest/sched.py): it cues the next operation to look (and yield).
        self._kernel = kernel
        if kernel is not None:
            kernel.subscribe(self._kernel_cue)
        # The host's memory model (host_memory): what the host said the workload's
        # touches cost (swap-ins, writeback of what made room: Notice.delay_us), not
        # yet waited; and the seconds waited so far. A fault stalls the vCPU that
        # took it, so the workload really waits before its next operation.
        self.fault_debt = 0.0
        self.fault_wait_seconds = 0.0
        # A snapshot's last round stops the vCPUs (guest/balloon/migration.py): the
        # workload parks before its next operation until this is set again.
        self.running = asyncio.Event()
        self.running.set()

    def set_paused(self, paused: bool) -> None:
        if paused:
            self.running.clear()
        else:
            self.running.set()

    async def unpaused(self) -> None:
        """Before an operation that writes memory: wait out a snapshot's pause."""
        if not self.running.is_set():
            await self._park()

    async def _park(self) -> None:
        """Wait out a pause (or a stop: a stopping guest is not held)."""
        stop = asyncio.ensure_future(self.stop.wait())
        run = asyncio.ensure_future(self.running.wait())
        try:
            await asyncio.wait({stop, run}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            run.cancel()

    def add_fault_debt(self, seconds: float) -> None:
        """The host says the workload's touches cost ``seconds`` (a Notice)."""
        self.fault_debt += seconds

    async def _pay_fault_debt(self) -> None:
        debt, self.fault_debt = self.fault_debt, 0.0
        t0 = time.monotonic()
        await self._sleep(debt)  # wakes early on stop: a stopping guest does not wait
        # What was waited, not the loop's lateness on top of it (a shared loop wakes
        # sleepers late; that is not the host's fault time).
        self.fault_wait_seconds += min(time.monotonic() - t0, debt)
        self._resume()

    def now(self) -> float:
        return self._clock() - self._t0

    async def tick(self) -> None:
        """Count one operation; yield to the loop every YIELD_EVERY of them (or, on a
        loop shared by many guests, as the LoopShare says: see share.py)."""
        await self.ticks(1)

    def _kernel_cue(self) -> None:
        self._next_check = 0

    async def _maybe_yield(self) -> None:
        """Every 2**CLOCK_SHIFT operations: yield if YIELD_EVERY have passed since
        the last yield, or YIELD_AFTER_S of work. While the policy's worker is
        under way (guest/sched.py): at every operation while it runs, after
        POLL_S of work while it waits on the host (unless the host is late)."""
        kernel = self._kernel
        if kernel is not None and kernel.under_way:
            if kernel.runnable:
                self._next_check = self._ops + 1
                await self._yield_now()
                return
            now = time.perf_counter()
            if not kernel.host_late(now):
                self._next_check = self._ops + 1
                spent = now - self._resumed
                if spent >= POLL_S:
                    await self._yield_now()
                    return
                # Not yet: look again about halfway to POLL_S at the rate of the
                # operations since the last yield (not at every operation: a
                # coroutine and a clock read each), within 2**CLOCK_SHIFT at most.
                done = self._ops - self._ops_resumed
                if done > 0 and spent > 0:
                    ahead = int((POLL_S - spent) * done / spent) // 2
                    self._next_check += min(max(ahead, 0), (1 << CLOCK_SHIFT) - 1)
                return
            # The host is late (sched.HOST_LATE_S): the usual slices; the pass's
            # cue still comes when the answer lets it go on.
        self._next_check = ((self._ops >> CLOCK_SHIFT) + 1) << CLOCK_SHIFT
        if self._ops >= self._next_yield or time.perf_counter() - self._resumed >= YIELD_AFTER_S:
            await self._yield_now()

    def _resume(self) -> None:
        """The workload's work starts again now (after a yield, a sleep, a wait)."""
        self._resumed = time.perf_counter()
        self._ops_resumed = self._ops

    async def _yield_now(self) -> None:
        await asyncio.sleep(0)
        self._resume()
        self._next_yield = self._ops + YIELD_EVERY

    async def ticks(self, n: int) -> None:
        """Count ``n`` operations at once (a tight loop's batch), yielding as tick()
        would have somewhere among them."""
        if self.fault_debt:
            await self._pay_fault_debt()
        before = self._ops
        self._ops += n
        loop_share = share.shared
        if loop_share is None:
            if self._ops >= self._next_check:  # one compare per operation
                await self._maybe_yield()
        elif self._ops // loop_share.slice_ops != before // loop_share.slice_ops:
            # Capped: a slice that spans a wait the clock cannot see (a caller's
            # own await) must not be charged as a whole window of work.
            spent = min(time.perf_counter() - self._resumed, loop_share.window)
            await loop_share.pass_turn(spent)
            self._resume()
        if not self.running.is_set():
            await self._park()

    async def sleep(self, seconds: float) -> bool:
        """Sleep, waking early on stop; returns False if stopped."""
        try:
            if self.fault_debt:
                # A fault's wait comes first: a workload's pause does not absorb it.
                await self._pay_fault_debt()
            awake = await self._sleep(seconds)
            if awake and not self.running.is_set():
                await self._park()
            return awake and not self.stop.is_set()
        finally:
            # Time asleep is not work: the loop share charges only what runs.
            self._resume()

    async def _sleep(self, seconds: float) -> bool:
        if seconds <= 0:
            # Still a yield: a workload that overruns its time slice (churn at a
            # rate it cannot reach) must let signals and --duration in.
            await asyncio.sleep(0)
            return not self.stop.is_set()
        try:
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)
        except TimeoutError:
            return True
        return False

    def mark(self, label: str) -> None:
        self.stats.marks.append((self.now(), label))
        if self._on_mark is not None:
            self._on_mark(label)

    async def alloc_bytes(self, name: str, size: int, order: int) -> int:
        """Allocate ``size`` bytes as ``order`` blocks into group ``name``; returns blocks got."""
        block = PAGE_SIZE << order
        count = -(-size // block)
        group = self.groups.setdefault(name, HeldBlocks())
        got = 0
        for _ in range(count):
            if self.stop.is_set():
                break
            await self.unpaused()
            got += self.alloc_into(group, order)
            await self.tick()
        return got

    def alloc_into(self, group: HeldBlocks, order: int) -> int:
        """One block of ``order`` into ``group``, counted; 1 if got, 0 if it failed."""
        pfn = self.memory.alloc(order)
        self.stats.alloc_ops += 1
        if pfn < 0:
            self.stats.alloc_failures += 1
            return 0
        group.append(pfn, order)
        return 1

    async def free_group(self, name: str, stride: int = 1, offset: int = 0) -> int:
        """Free every ``stride``-th block of group ``name`` starting at ``offset``."""
        group = self.groups.get(name, HeldBlocks())
        keep = HeldBlocks()
        freed = 0
        for i, (pfn, order) in enumerate(group):
            if i >= offset and (i - offset) % stride == 0:
                await self.unpaused()
                self.memory.free(pfn, order)
                self.stats.free_ops += 1
                freed += 1
                await self.tick()
            else:
                keep.append(pfn, order)
        if keep:
            self.groups[name] = keep
        else:
            self.groups.pop(name, None)
        return freed
