"""Proxmox VE's auto-ballooning, transcribed.

Source: proxmox/pve-manager, PVE/AutoBalloon.pm (``compute_alg1``) as
PVE/Service/pvestatd.pm calls it (``auto_ballooning``, ``auto_balloning``
before pve-manager 7d68e160; every ``$updatetime`` = 10 s): the host tries
to keep its memory use at ``ballooning-target`` (80% by default) of MemTotal,
where use is MemTotal − MemAvailable (proxmox/pve-common src/PVE/ProcFSTools.pm
``read_meminfo``); the goal is
``int(memtotal × 80 / 100 − memused)`` bytes, and each guest moves at most
``$maxchange`` = 100 MiB a cycle. When |goal| is at most 10 MiB nothing is done.

compute_alg1 splits the goal over the guests by ``shares`` (1000 each unless
set): each is given ``balloon_min + int(alloc_new / shares_total × shares)``,
clamped to [balloon_min, maxmem], moved at most maxchange from where it is,
repeated until the goal is spent or nothing moves. Growing serves guests under
memory pressure first (free memory at most a quarter of their minimum, below
it, or no stats), then all; shrinking takes from guests with free memory first,
then all. A guest is left out without a running balloon driver, without a
minimum set (``balloon_min``: here --balloon-min; unset, Proxmox's default, is
0 here, and such a guest is not auto-ballooned), with shares 0, or locked for
migration (not transcribed: nothing here migrates). The unit tests run the source's own
test (pve-manager test/balloontest.pl) and expect its numbers.

Mapped: ``balloon`` (QMP query-balloon's actual) is the guest's memory now,
``maxmem`` its RAM, ``freemem`` its stats' free-memory (qemu-server's vmstatus
takes it only when total-memory came too: the guest always sends both).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from host.control.base import Controller, HostView

UPDATE_TIME = 10.0  # pvestatd.pm: my $updatetime = 10
TARGET_PERCENT = 80  # pvestatd.pm: ballooning-target // 80
MAX_CHANGE = 100 * 1024 * 1024  # pvestatd.pm: my $maxchange = 100 * 1024 * 1024
DEAD_ZONE = 10 * 1024 * 1024  # AutoBalloon.pm: $goal > 10 * 1024 * 1024 (and < -...)
DEFAULT_SHARES = 1000  # AutoBalloon.pm: $d->{shares} || 1000
PRESSURE_FREE_RATIO = 0.25  # AutoBalloon.pm: freemem > balloon_min * 0.25


@dataclass
class VmStatus:
    """One guest as compute_alg1 reads it (PVE::QemuServer::vmstatus's fields)."""

    balloon: int  # memory the guest has now (0: no balloon driver running)
    balloon_min: int  # its configured minimum (0: not set)
    maxmem: int
    freemem: int = 0  # 0: no stats
    shares: int | None = None  # None: not set (1000)


def _change(
    vms: Mapping[str, VmStatus], res: dict[str, int], ids: list[str], goal: int, maxchange: int
) -> int:
    """compute_alg1's $change_func: spend ``goal`` bytes over ``ids``; the rest."""
    rest = goal
    repeat = progress = 1
    done: set[str] = set()
    while rest and repeat and progress:
        repeat = progress = 0
        shares_total = 0
        alloc_old = 0
        for vmid in ids:
            if vmid in done:
                continue
            d = vms[vmid]
            balloon = res.get(vmid, d.balloon)
            alloc_old += balloon - d.balloon_min
            shares_total += d.shares or DEFAULT_SHARES
        changes = 0
        alloc_new = alloc_old + rest
        for vmid in ids:
            if vmid in done:
                continue
            d = vms[vmid]
            shares = d.shares or DEFAULT_SHARES
            desired = d.balloon_min + int((alloc_new / shares_total) * shares)
            if desired > d.maxmem:
                desired = d.maxmem
                repeat = 1
            elif desired < d.balloon_min:
                desired = d.balloon_min
                repeat = 1
            if goal > 0 and desired - d.balloon > 0:  # grow
                new = d.balloon + maxchange
                balloon = desired if new > desired else new
            elif desired - d.balloon < 0:  # shrink
                new = d.balloon - maxchange
                balloon = new if new > desired else desired
            else:
                done.add(vmid)
                continue
            diff = balloon - d.balloon
            if diff != 0:
                old = res.get(vmid, d.balloon)
                res[vmid] = balloon
                change = balloon - old
                if change != 0:
                    changes += change
                    progress += abs(diff)
                    repeat = 1
        rest -= changes
    return rest


def compute_alg1(
    vmstatus: Mapping[str, VmStatus], goal: int, maxchange: int = MAX_CHANGE
) -> dict[str, int]:
    """PVE::AutoBalloon::compute_alg1: guest id -> its new memory (changed ones only)."""
    ids: list[str] = []
    pressured: list[str] = []  # idlist1: memory pressure
    roomy: list[str] = []  # idlist2: enough free memory
    for vmid in sorted(vmstatus):  # Perl's hash order; the result does not depend on it
        d = vmstatus[vmid]
        if not d.balloon or not d.balloon_min:
            continue
        if d.shares is not None and d.shares == 0:
            continue
        ids.append(vmid)
        if (
            d.freemem
            and d.freemem > d.balloon_min * PRESSURE_FREE_RATIO
            and (d.balloon >= d.balloon_min)
        ):
            roomy.append(vmid)
        else:
            pressured.append(vmid)
    res: dict[str, int] = {}
    if goal > DEAD_ZONE:
        rest = _change(vmstatus, res, pressured, goal, maxchange)
        if rest >= goal:  # no progress: consider all
            _change(vmstatus, res, ids, rest, maxchange)
    elif goal < -DEAD_ZONE:
        rest = _change(vmstatus, res, roomy, goal, maxchange)
        if rest <= goal:
            _change(vmstatus, res, ids, rest, maxchange)
    return res


def host_goal(memtotal: int, memused: int, target_percent: int = TARGET_PERCENT) -> int:
    """pvestatd's goal: bytes the guests may grow by (negative: must shrink by)."""
    return int(memtotal * target_percent / 100 - memused)


def vm_statuses(host: HostView) -> dict[str, VmStatus]:
    return {
        g.guest_id: VmStatus(
            balloon=g.memory_bytes,
            balloon_min=min(g.min_bytes, g.ram_bytes),
            maxmem=g.ram_bytes,
            freemem=g.free_bytes or 0,
        )
        for g in host.guests
    }


class ProxmoxAutoBalloon(Controller):
    """pvestatd's auto_balloning on the host's view (see the module)."""

    name = "proxmox"
    period = UPDATE_TIME

    def decide(self, host: HostView) -> Mapping[str, int]:
        vms = vm_statuses(host)
        memused = host.memory_bytes - host.available_bytes
        res = compute_alg1(vms, host_goal(host.memory_bytes, memused))
        return {vmid: int(v) for vmid, v in res.items() if int(v) != vms[vmid].balloon}
