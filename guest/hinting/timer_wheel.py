"""When a kernel timer armed for a delay fires: the timer wheel's rounding.

page_reporting's pass is delayed work (``schedule_delayed_work(&work,
PAGE_REPORTING_DELAY)``, 2 * HZ jiffies), and delayed work is a timer_list
timer. The timer wheel (kernel/time/timer.c, ``calc_wheel_index`` and
``calc_index``) files a timer in a level by how far off it is, and rounds its
expiry up to that level's granularity, strictly after the expiry, so a timer
never fires early and mostly fires a little late: 2 s at HZ=250 is 500 jiffies,
level 1, granularity 8 jiffies (32 ms), so it fires at the first 8-jiffy
boundary after the 2 s — up to 32 ms late, ~16 ms on average from a request at
a random instant, 4 jiffies from one made at a tick (a pass that requests the
next from the timer's own tick: 500 mod 8 = 4). Over the passes a free waits
for, that is how far the kernel's cycle drifts from an exact 2 s period
(bench/reference/linux/: chained passes 2.016 s apart). The timer is not
deferrable (BASE_STD), so an idle CPU wakes for it; only the kworker's wake-up
comes on top, not modelled.

Each guest keeps its own jiffies. A kernel's jiffies_64 starts at
INITIAL_JIFFIES (include/linux/jiffies.h) and counts from when its tick starts,
some boot-dependent time after its monotonic clock's zero; its ticks fall on
whole multiples of TICK_NSEC of that clock (tick_init_jiffy_update in
kernel/time/tick-sched.c, since 13bb06f8dd42 — v6.4, and sent to the 6.1 stable
series). The bucket grid is aligned to absolute jiffies values, so its phase is
the guest's own. The model puts the guest's jiffy 0 (INITIAL_JIFFIES) at its
allocator's construction, its "boot" — an arbitrary origin, as the kernel's
is. What matters is that guests booted at other instants have other bucket
boundaries: on one host clock they all had the same ones, and every guest
registering within one 32 ms bucket ran its first pass at the same instant — a
burst no set of separately booted VMs makes.
"""

from __future__ import annotations

import math

LVL_CLK_SHIFT = 3  # kernel/time/timer.c: each level is 8 times coarser
LVL_BITS = 6  # 64 buckets per level
LVL_SIZE = 1 << LVL_BITS
DEBIAN_HZ = 250  # CONFIG_HZ of Debian 12's 6.1 (/boot/config-6.1.0-57-amd64)


def initial_jiffies(hz: int) -> int:
    """INITIAL_JIFFIES on a 64-bit kernel: (unsigned long)(unsigned int)(-300 * HZ)."""
    return 2**32 - 300 * hz


def lvl_depth(hz: int) -> int:
    """LVL_DEPTH: 9 levels above HZ=100, 8 at or below."""
    return 9 if hz > 100 else 8


def lvl_start(n: int) -> int:
    """LVL_START(n): the least delta (jiffies) filed in level ``n``."""
    return (LVL_SIZE - 1) << ((n - 1) * LVL_CLK_SHIFT)


def bucket_expiry(expires: int, clk: int, hz: int = DEBIAN_HZ) -> int:
    """The jiffy a timer armed at ``clk`` for ``expires`` fires at
    (calc_wheel_index, then calc_index's round-up)."""
    delta = expires - clk
    if delta < 0:
        return clk  # already expired: the current bucket
    depth = lvl_depth(hz)
    cutoff = lvl_start(depth)  # WHEEL_TIMEOUT_CUTOFF
    if delta >= cutoff:
        # WHEEL_TIMEOUT_MAX: the farthest the wheel holds; the last level.
        expires = clk + cutoff - (1 << ((depth - 1) * LVL_CLK_SHIFT))
        lvl = depth - 1
    else:
        lvl = next(n for n in range(depth) if delta < lvl_start(n + 1))
    shift = lvl * LVL_CLK_SHIFT
    return ((expires >> shift) + 1) << shift


def fire_time(now: float, delay: float, hz: int, boot: float = 0.0) -> float:
    """Seconds (on ``now``'s clock) at which delayed work queued at ``now`` for
    ``delay`` seconds runs in a guest that booted at ``boot`` (the same clock):
    the model's origin of its jiffies (INITIAL_JIFFIES there, a tick every 1/hz
    from there; the module's doc says why any origin of its own will do).
    ``hz`` 0 is an exact timer; a zero delay queues the work at once, as
    queue_delayed_work() does."""
    if hz <= 0 or delay <= 0:
        return now + max(delay, 0.0)
    first = initial_jiffies(hz)
    jiffies = first + math.floor((now - boot) * hz)
    # PAGE_REPORTING_DELAY is 2 * HZ jiffies; another delay is rounded up to whole
    # jiffies, as msecs_to_jiffies() does.
    ticks = math.ceil(delay * hz - 1e-9)
    return boot + (bucket_expiry(jiffies + ticks, jiffies, hz) - first) / hz
