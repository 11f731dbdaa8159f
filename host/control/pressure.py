"""A pressure rule: Facebook's senpai, with the balloon as its limit.

Source: facebookincubator/senpai, senpai.py (its defaults, its tick). Senpai
squeezes a cgroup's memory.high until the cgroup's memory pressure (PSI
``some`` stall time) reaches a small target, and lets go when it passes it:

- every second (``tick``) it adds the stall time since the last tick to an
  integral;
- over the target (--pressure 10,000 µs): back off at once, growing the limit
  by ``limit × min((integral / target / 20)², 1) × 1.0`` (--coeff-backoff 20,
  --max-backoff 1.0), then wait ``interval − 1`` ticks (--interval 6);
- under it, once the wait is over: tighten by
  ``limit × min((target / max(integral, 1) / 10)², 1) × 0.01`` (--coeff-probe
  10, --max-probe 0.01), and wait again. The integral starts over after each
  adjustment. The wait is the hysteresis: it backs off on the first tick that
  hurts, and probes again only after a quiet interval.
- the limit stays within [--min-size 100 MiB, --max-size], on 4 KiB pages
  (import_limit); senpai writes memory.current so clamped when it starts, and
  if someone else changed the limit, its next adjustment starts again from
  memory.current instead of scaling (import_limit's reset).

Mapped, per guest: the limit is the memory the guest is asked to have (RAM −
balloon target), max-size its RAM, min-size the larger of senpai's 100 MiB and
--balloon-min; the pressure is the seconds the guest's touches waited on the
host's swap, which the host's PSI would count for the VM's vCPU threads
(approximately: Linux's swap_readpage enters a memstall only for a workingset
refault, and the model also charges the swap-outs a touch forces: direct
reclaim, which PSI does count). Senpai reads the cgroup's
own PSI, so it knows nothing of the host's free memory: it is the proactive
design (take what a guest does not miss), beside the two that answer the host's
shortage (MOM, Proxmox). Someone else changing a guest's target (``pagehint
balloon``) is the "someone else changed memory.high" case. A guest's stall count
starts at 0 with each new session; a count that went down is taken as 0 since.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from host.control.base import Controller, GuestView, HostView

# senpai.py's argparse defaults.
TICK = 1.0  # run(): time.sleep(1) between ticks
INTERVAL = 6  # --interval (ticks)
PRESSURE_US = 10 * 1000  # --pressure: target stall per interval, microseconds
MAX_PROBE = 0.01  # --max-probe
MAX_BACKOFF = 1.0  # --max-backoff
COEFF_PROBE = 10  # --coeff-probe
COEFF_BACKOFF = 20  # --coeff-backoff
MIN_SIZE = 100 << 20  # --min-size
PAGE_MASK = ~4095  # import_limit: limit &= ~4095


@dataclass
class SenpaiState:
    """One guest's senpai (Senpai.__init__)."""

    limit: int  # the limit senpai last wrote (its self.limit)
    last_total: float  # stall seconds at the last tick
    integral: float = 0.0  # microseconds since the last adjustment
    grace_ticks: int = INTERVAL


def backoff_factor(integral: float) -> float:
    err = integral / PRESSURE_US
    return min((err / COEFF_BACKOFF) ** 2 * MAX_BACKOFF, MAX_BACKOFF)


def probe_factor(integral: float) -> float:
    err = PRESSURE_US / max(integral, 1)
    return min((err / COEFF_PROBE) ** 2 * MAX_PROBE, MAX_PROBE)


def clamp(limit: int, lo: int, hi: int) -> int:
    """import_limit: within [min, max], on 4 KiB pages."""
    return max(lo, min(hi, limit)) & PAGE_MASK


def adjust(st: SenpaiState, factor: float, now: int, current: int, lo: int, hi: int) -> int:
    """Senpai.adjust: Cgroup.scale_limit then import_limit. ``now`` is the limit
    as it reads now (the guest's target memory): if someone else changed it,
    senpai drops its scaled value and starts from memory.current."""
    x = current if now != st.limit else int(now + now * factor)
    st.limit = clamp(x, lo, hi)
    st.integral = 0.0
    return st.limit


def tick(st: SenpaiState, total: float, now: int, current: int, lo: int, hi: int) -> int | None:
    """Senpai.tick for one guest: its new limit, or None when it waits."""
    if total < st.last_total:  # a new session's count starts at 0 again
        st.last_total = total
    delta = (total - st.last_total) * 1e6
    st.last_total = total
    st.integral += delta
    if st.integral > PRESSURE_US:
        limit = adjust(st, backoff_factor(st.integral), now, current, lo, hi)
        st.grace_ticks = INTERVAL - 1
        return limit
    if st.grace_ticks:
        st.grace_ticks -= 1
        return None
    limit = adjust(st, -probe_factor(st.integral), now, current, lo, hi)
    st.grace_ticks = INTERVAL - 1
    return limit


class SenpaiPressure(Controller):
    """senpai.py per guest, the balloon as memory.high (see the module)."""

    name = "pressure"
    period = TICK

    def __init__(self) -> None:
        self.guests: dict[str, SenpaiState] = {}

    @staticmethod
    def _lo(g: GuestView) -> int:
        return min(g.ram_bytes, max(MIN_SIZE, g.min_bytes))

    def decide(self, host: HostView) -> Mapping[str, int]:
        out: dict[str, int] = {}
        live = set()
        for g in host.guests:
            live.add(g.guest_id)
            lo, hi = self._lo(g), g.ram_bytes
            st = self.guests.get(g.guest_id)
            if st is None:
                # Cgroup.__init__: set_limit(None) writes memory.current, clamped;
                # the first tick comes a second later.
                st = SenpaiState(clamp(g.memory_bytes, lo, hi), g.stall_seconds)
                self.guests[g.guest_id] = st
                new: int | None = st.limit
            else:
                new = tick(st, g.stall_seconds, g.target_memory_bytes, g.memory_bytes, lo, hi)
            if new is not None and new != g.target_memory_bytes:
                out[g.guest_id] = new
        for gone in set(self.guests) - live:
            del self.guests[gone]
        return out
