"""oVirt MOM's balloon rules, transcribed.

Source: oVirt/mom, doc/balloon.rules at commit e0f3d3b7 (the version that floors
a guest at ``max(guest.balloon_min, ...)`` and grows with
``min_guest_free_percent``), run as doc/mom-balloon.conf runs it: the host and
guest monitors sample every 5 s (host-monitor-interval, guest-monitor-interval),
the policy engine evaluates the rules every 10 s (policy-engine-interval), and
``StatAvg`` is the mean of the last 10 samples (sample-history-length;
mom/Monitor.py keeps that many).

The rules: host_free_percent = mean(mem_free) / mem_available, where MOM's
HostMemory collector reads mem_free = MemFree + Buffers + Cached and
mem_available = MemTotal (mom/Collectors/HostMemory.py). Under 20% (pressure)
every guest shrinks, else every guest grows:

- shrink: guest_free_percent = 0.20 × host_free_percent / 0.20, or, at 5% and
  under (critical), host_free_percent − 0.05 (negative: "force guest to swap");
  floor = max(balloon_min, mean(balloon_cur) − mean(mem_unused) +
  guest_free_percent × balloon_cur); size = balloon_cur × 0.95, not under the
  floor; set only if size ≤ balloon_cur and it moves by more than 0.25% of
  balloon_cur.
- grow (only a ballooned guest: balloon_cur < balloon_max): floor =
  max(balloon_min, used + 0.20 × balloon_cur); size = balloon_cur × 1.05, not
  under the floor, not over balloon_max; set if it moves by more than 0.25%.

Mapped: balloon_cur is the guest's memory now (RAM − balloon), balloon_max its
RAM, balloon_min --balloon-min (libvirt's <min_guarantee>; MOM's libvirt
interface reads 0 when it is not set), mem_unused its stats' free-memory.
mem_free here is the host's free memory: the model has no page cache, and its
lazily freed frames are anonymous pages (AnonPages, Inactive(file) once
lazily freed), not Cached. Departures, named: MOM's guest monitor is ready only
once it has all six of its fields (available, unused, major and minor faults,
swap in and out); the guest sends no swap figures (no guest swap is modelled),
so a guest counts as ready once it has sent free-memory, and one without it is
left alone. MOM works in whole KiB (StatAvg's integer division, ``int(target)``
in KiB), this in bytes: under 1 KiB apart. With a minimum set, MOM's libvirt
interface hands the rules ``<min_guarantee>`` as a string, which Python 2's
``max`` then prefers to any number (shrinking never fires, growing jumps to
balloon_max): this follows the rules' numeric intent instead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from host.control.base import Controller, GuestView, HostView

# doc/balloon.rules' constants.
PRESSURE_THRESHOLD = 0.20
PRESSURE_CRITICAL = 0.05
MIN_GUEST_FREE_PERCENT = 0.20
MAX_BALLOON_CHANGE_PERCENT = 0.05
MIN_BALLOON_CHANGE_PERCENT = 0.0025
# doc/mom-balloon.conf.
MONITOR_INTERVAL = 5.0  # host-monitor-interval, guest-monitor-interval
POLICY_INTERVAL = 10.0  # policy-engine-interval
SAMPLE_HISTORY_LENGTH = 10


def change_big_enough(balloon_cur: float, new_val: float) -> bool:
    return abs(new_val - balloon_cur) > MIN_BALLOON_CHANGE_PERCENT * balloon_cur


def guest_free_percent(host_free_percent: float) -> float:
    """How much free memory a guest is left under pressure (shrink_guest)."""
    if host_free_percent <= PRESSURE_CRITICAL:
        return -0.05 + host_free_percent
    return MIN_GUEST_FREE_PERCENT * (host_free_percent / PRESSURE_THRESHOLD)


def shrink_guest(
    host_free_percent: float,
    balloon_cur: float,
    balloon_min: float,
    avg_cur: float,
    avg_unused: float,
) -> float | None:
    """The new target of shrink_guest, or None where the rule sets none."""
    used = avg_cur - avg_unused
    floor = max(balloon_min, used + guest_free_percent(host_free_percent) * balloon_cur)
    size = balloon_cur * (1 - MAX_BALLOON_CHANGE_PERCENT)
    if size < floor:
        size = floor
    if size <= balloon_cur and change_big_enough(balloon_cur, size):
        return size
    return None


def grow_guest(
    balloon_cur: float,
    balloon_max: float,
    balloon_min: float,
    avg_cur: float,
    avg_unused: float,
) -> float | None:
    """The new target of grow_guest, or None where the rule sets none."""
    if not balloon_cur < balloon_max:
        return None
    used = avg_cur - avg_unused
    floor = max(balloon_min, used + MIN_GUEST_FREE_PERCENT * balloon_cur)
    size = balloon_cur * (1 + MAX_BALLOON_CHANGE_PERCENT)
    if size < floor:
        size = floor
    if size > balloon_max:
        size = balloon_max
    return size if change_big_enough(balloon_cur, size) else None


class MomBalloon(Controller):
    """doc/balloon.rules on the host's view (see the module)."""

    name = "mom"
    period = MONITOR_INTERVAL

    def __init__(self) -> None:
        self.host_free: deque[float] = deque(maxlen=SAMPLE_HISTORY_LENGTH)
        self.cur: dict[str, deque[float]] = {}
        self.unused: dict[str, deque[float]] = {}
        self.samples = 0
        self.every = max(1, round(POLICY_INTERVAL / MONITOR_INTERVAL))

    def _sample(self, host: HostView) -> list[GuestView]:
        self.host_free.append(host.free_bytes)
        ready = []
        live = set()
        for g in host.guests:
            live.add(g.guest_id)
            if g.free_bytes is None:
                continue
            self.cur.setdefault(g.guest_id, deque(maxlen=SAMPLE_HISTORY_LENGTH)).append(
                g.memory_bytes
            )
            self.unused.setdefault(g.guest_id, deque(maxlen=SAMPLE_HISTORY_LENGTH)).append(
                g.free_bytes
            )
            ready.append(g)
        for gone in set(self.cur) - live:  # a guest that left: its history goes
            del self.cur[gone], self.unused[gone]
        return ready

    def decide(self, host: HostView) -> Mapping[str, int]:
        ready = self._sample(host)
        self.samples += 1
        if self.samples % self.every or host.memory_bytes <= 0:
            return {}
        host_free_percent = _mean(self.host_free) / host.memory_bytes
        out: dict[str, int] = {}
        for g in ready:
            avg_cur, avg_unused = _mean(self.cur[g.guest_id]), _mean(self.unused[g.guest_id])
            cur = g.memory_bytes
            if host_free_percent < PRESSURE_THRESHOLD:
                size = shrink_guest(host_free_percent, cur, g.min_bytes, avg_cur, avg_unused)
            else:
                size = grow_guest(cur, g.ram_bytes, g.min_bytes, avg_cur, avg_unused)
            if size is not None:
                out[g.guest_id] = max(0, min(g.ram_bytes, int(size)))
        return out


def _mean(xs: deque[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0
