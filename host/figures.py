"""The figures the host reports (the Stats call): per guest, and host-wide. Read
from the sessions (host/sessions.py), the device's counters
(host/device_metrics.py) and the memory backend; nothing here changes them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from host.memory.hostmem import HostMemory
from host.sessions import Session
from virtqueue.codec import GuestFigures, HostFigures
from virtqueue.contract import PAGE_SIZE

if TYPE_CHECKING:
    from host.device import BalloonDevice


def guest_figures(s: Session) -> GuestFigures:
    """One session's figures (its guest's line of sessions: GuestTotals)."""
    ps = PAGE_SIZE
    resident = s.ram.resident_pages()
    s.peak_resident_pages = max(s.peak_resident_pages, resident)
    t = s.totals
    swapped = s.ram.swapped_pages()
    major, minor = s.ram.faults()
    return GuestFigures(
        guest_id=s.guest_id,
        ram_bytes=s.ram_bytes,
        resident_bytes=resident * ps,
        lazily_free_bytes=s.ram.lazily_free_pages() * ps,
        # Not held in memory nor in swap (swapped frames are the guest's still).
        discarded_bytes=(s.nr_pages - resident - swapped) * ps,
        reported_bytes=t.reported_pages * ps,
        chains=t.chains,
        refused_chains=t.refused,
        touched_bytes=t.touched_pages * ps,
        poison_skipped_chains=t.poison_skipped,
        peak_resident_bytes=s.peak_resident_pages * ps,
        measured_by_kernel=s.ram.measured_by_kernel,
        failed_chains=t.failed,
        sessions=t.sessions,
        swapped_bytes=swapped * ps,
        major_faults=major,
        minor_faults=minor,
    )


def own_figures(device: BalloonDevice, self_guest: GuestFigures) -> HostFigures:
    """What a caller not authorised for every guest sees: its own guest only."""
    return HostFigures(
        guests=[],
        capacity_bytes=0,
        resident_bytes=0,
        peak_resident_bytes=0,
        reclaimed_bytes=0,
        chains=0,
        refused_chains=0,
        backend=device.backend.name,
        self_guest=self_guest,
        instance=device.instance,
    )


def host_figures(device: BalloonDevice, self_guest: GuestFigures | None = None) -> HostFigures:
    """Every guest's figures and the host's (what an admin's Stats call sees)."""
    resident = device.note_host_peak()
    m = device.metrics
    cap = device.backend.capacity_pages
    model = device.backend.model
    reclaimed = device.backend.reclaimed if model is None else model.lazy_reclaimed
    return HostFigures(
        guests=[guest_figures(s) for s in device.table.sessions.values()],
        capacity_bytes=(cap or 0) * PAGE_SIZE,
        resident_bytes=resident * PAGE_SIZE,
        peak_resident_bytes=m.peak_resident_pages * PAGE_SIZE,
        reclaimed_bytes=reclaimed * PAGE_SIZE,
        chains=m.chains,
        refused_chains=sum(m.refusals.values()),
        refusals=dict(m.refusals),
        backend=device.backend.name,
        self_guest=self_guest,
        failed_chains=m.failed_chains,
        discard_errors=dict(m.discard_errors),
        instance=device.instance,
        **model_figures(model),
    )


def model_figures(m: HostMemory | None) -> dict[str, int]:
    """The host memory model's figures (HostFigures fields; none without it)."""
    if m is None:
        return {}
    return {
        "host_memory_bytes": m.memory_pages * PAGE_SIZE,
        "swap_bytes": m.swap_pages * PAGE_SIZE,
        "swap_used_bytes": m.swap_used * PAGE_SIZE,
        "swap_ins": m.swap_ins,
        "swap_outs": m.swap_outs,
        "oom_kills": m.oom_kills,
        "vmm_overhead_bytes": m.overhead_pages * PAGE_SIZE,
    }
