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
- the limit stays within [--min-size 100 MiB, --max-size], on 4 KiB pages; if
  someone else changed it, senpai starts again from memory.current.

Mapped, per guest: the limit is the memory the guest is asked to have (RAM −
balloon target), max-size its RAM, min-size the larger of senpai's 100 MiB and
--balloon-min; the pressure is the seconds the guest's touches waited on the
host's swap, which is what the host's PSI would count for the VM's vCPU threads
(a task blocked in a swap-in fault is in a memstall). Senpai reads the cgroup's
own PSI, so it knows nothing of the host's free memory: it is the proactive
design (take what a guest does not miss), beside the two that answer the host's
shortage (MOM, Proxmox). Someone else changing a guest's target (``pagehint
balloon``) makes it start again from the guest's current memory.
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

    limit: int
    last_total: float  # stall seconds at the last tick
    integral: float = 0.0  # microseconds since the last adjustment
    grace_ticks: int = INTERVAL


def backoff_factor(integral: float) -> float:
    err = integral / PRESSURE_US
    return min((err / COEFF_BACKOFF) ** 2 * MAX_BACKOFF, MAX_BACKOFF)


def probe_factor(integral: float) -> float:
    err = PRESSURE_US / max(integral, 1)
    return min((err / COEFF_PROBE) ** 2 * MAX_PROBE, MAX_PROBE)


def scale(limit: int, factor: float, lo: int, hi: int) -> int:
    """Cgroup.scale_limit then import_limit: x + x × factor, clamped, page-aligned."""
    x = int(limit + limit * factor)
    return max(lo, min(hi, x)) & PAGE_MASK


def tick(st: SenpaiState, total: float, lo: int, hi: int) -> int | None:
    """Senpai.tick for one guest: its new limit, or None when it waits."""
    delta = (total - st.last_total) * 1e6
    st.last_total = total
    st.integral += delta
    if st.integral > PRESSURE_US:
        st.limit = scale(st.limit, backoff_factor(st.integral), lo, hi)
        st.integral = 0.0
        st.grace_ticks = INTERVAL - 1
        return st.limit
    if st.grace_ticks:
        st.grace_ticks -= 1
        return None
    st.limit = scale(st.limit, -probe_factor(st.integral), lo, hi)
    st.integral = 0.0
    st.grace_ticks = INTERVAL - 1
    return st.limit


class SenpaiPressure(Controller):
    """senpai.py per guest, the balloon as memory.high (see the module)."""

    name = "pressure"
    period = TICK

    def __init__(self) -> None:
        self.guests: dict[str, SenpaiState] = {}

    def _state(self, g: GuestView) -> SenpaiState:
        st = self.guests.get(g.guest_id)
        if st is None or st.limit != g.target_memory_bytes:
            # New, or someone else set its target: start from memory.current.
            limit = max(self._lo(g), min(g.ram_bytes, g.memory_bytes)) & PAGE_MASK
            st = SenpaiState(limit, g.stall_seconds)
            self.guests[g.guest_id] = st
        return st

    @staticmethod
    def _lo(g: GuestView) -> int:
        return min(g.ram_bytes, max(MIN_SIZE, g.min_bytes))

    def decide(self, host: HostView) -> Mapping[str, int]:
        out: dict[str, int] = {}
        live = set()
        for g in host.guests:
            live.add(g.guest_id)
            st = self._state(g)
            new = tick(st, g.stall_seconds, self._lo(g), g.ram_bytes)
            if new is not None and new != g.target_memory_bytes:
                out[g.guest_id] = new
        for gone in set(self.guests) - live:
            del self.guests[gone]
        return out
