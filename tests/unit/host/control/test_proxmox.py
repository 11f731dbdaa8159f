"""Proxmox's auto-ballooning against its own test: pve-manager test/balloontest.pl
(every abtest and absim case, with its numbers; MB there is 1000 × 1000)."""

from __future__ import annotations

import copy

import pytest

from host.control.base import GuestView, HostView
from host.control.proxmox import (
    MAX_CHANGE,
    ProxmoxAutoBalloon,
    VmStatus,
    compute_alg1,
    host_goal,
)


def MB(n: int) -> int:
    return n * 1000 * 1000


def GB(n: int) -> int:
    return n * 1000 * 1000 * 1000


def status1() -> dict[str, VmStatus]:
    return {
        "100": VmStatus(balloon=GB(1), balloon_min=GB(1), maxmem=GB(2), shares=2000),
        "101": VmStatus(balloon=GB(1), balloon_min=GB(1), maxmem=GB(2), shares=1000),
    }


def status2() -> dict[str, VmStatus]:
    return {
        "100": VmStatus(balloon=GB(2), balloon_min=GB(2), maxmem=GB(2), shares=2000),
        "101": VmStatus(balloon=GB(1), balloon_min=GB(1), maxmem=GB(2), shares=1000),
    }


def status3() -> dict[str, VmStatus]:
    return {
        "100": VmStatus(balloon=GB(2), balloon_min=GB(2), maxmem=GB(2), shares=2000),
        "101": VmStatus(balloon=GB(1) + MB(7), balloon_min=GB(1), maxmem=GB(2), shares=1000),
        "102": VmStatus(
            balloon=GB(1), balloon_min=GB(1), maxmem=GB(2), shares=1000, freemem=MB(512)
        ),
    }


def abtest(vms: dict[str, VmStatus], goal: int) -> dict[str, int]:
    return compute_alg1(vms, goal, MB(100))


def absim(vms: dict[str, VmStatus], goal: int) -> tuple[dict[str, int], dict[str, VmStatus]]:
    """The test's absim: apply each answer (freemem moved by the change, floored at
    0) and ask again until nothing changes; every value ever set, and the state."""
    vms = copy.deepcopy(vms)
    seen: dict[str, int] = {}
    while True:
        res = compute_alg1(vms, goal, MB(100))
        changes = abschanges = 0
        for vmid, v in res.items():
            diff = v - vms[vmid].balloon
            if diff:
                vms[vmid].freemem = max(0, vms[vmid].freemem + diff)
                vms[vmid].balloon = v
                seen[vmid] = v
                changes += diff
                abschanges += abs(diff)
        goal -= changes
        if not abschanges:
            return seen, vms


@pytest.mark.parametrize(
    ("goal", "expect"),
    [
        (0, {}),
        (MB(90), {"100": MB(1060), "101": MB(1030)}),
        (MB(150), {"100": MB(1100), "101": MB(1050)}),
        (MB(270), {"100": MB(1100), "101": MB(1090)}),
    ],
)
def test_status1_abtest(goal: int, expect: dict[str, int]) -> None:
    assert abtest(status1(), goal) == expect


@pytest.mark.parametrize(
    ("goal", "expect"),
    [
        (MB(180), {"100": MB(1120), "101": MB(1060)}),
        (MB(270), {"100": MB(1180), "101": MB(1090)}),
        (MB(600), {"100": MB(1300), "101": MB(1300)}),
        (MB(900), {"100": MB(1600), "101": MB(1300)}),
    ],
)
def test_status1_absim(goal: int, expect: dict[str, int]) -> None:
    assert absim(status1(), goal)[0] == expect


@pytest.mark.parametrize(
    ("goal", "expect"),
    [(0, {}), (MB(18), {"101": MB(1018)}), (MB(500), {"101": MB(1100)})],
)
def test_status2_abtest(goal: int, expect: dict[str, int]) -> None:
    assert abtest(status2(), goal) == expect


@pytest.mark.parametrize(
    ("goal", "expect"),
    [
        (0, {}),
        (MB(11), {"101": MB(1018)}),
        (MB(80), {"101": MB(1087)}),
        (MB(200), {"101": MB(1107)}),
    ],
)
def test_status3_abtest(goal: int, expect: dict[str, int]) -> None:
    assert abtest(status3(), goal) == expect


def test_status3_absim_grows_then_shrinks_as_the_source_expects() -> None:
    seen, status = absim(status3(), MB(593))
    assert seen == {"101": MB(1300), "102": MB(1300)}
    assert absim(status, -MB(200))[0] == {"101": MB(1200), "102": MB(1200)}
    assert absim(status, -MB(400))[0] == {"101": MB(1200), "102": GB(1)}
    assert absim(status, -MB(593))[0] == {"101": MB(1007), "102": GB(1)}


def test_a_guest_without_a_minimum_or_with_zero_shares_is_left_alone() -> None:
    vms = status1()
    vms["100"].balloon_min = 0
    vms["101"].shares = 0
    assert abtest(vms, MB(500)) == {}


def test_pvestatd_goal_is_80_percent_of_memtotal_less_memused() -> None:
    assert host_goal(GB(10), GB(9)) == -GB(1)
    assert host_goal(GB(10), GB(5)) == GB(3)


def _view(used: int, free: int | None, memory: int = 1 << 30) -> HostView:
    g = GuestView(
        "g1",
        ram_bytes=1 << 30,
        min_bytes=256 << 20,
        target_bytes=0,
        actual_bytes=0,
        stats={} if free is None else {"free-memory": free},
    )
    return HostView(0.0, 8 << 30, used, 0, 0, 0, 0, 0, (g,))


def test_the_controller_shrinks_by_at_most_100_mib_a_cycle_when_the_host_is_over_80() -> None:
    # Host at 95% of 8 GiB: goal = -15% = -1.2 GiB; the guest moves 100 MiB a cycle.
    out = ProxmoxAutoBalloon().decide(_view(used=int(8 * 0.95 * (1 << 30)), free=512 << 20))
    assert out == {"g1": (1 << 30) - MAX_CHANGE}


def test_the_controller_does_nothing_within_10_mib_of_the_goal() -> None:
    used = int(8 * 0.8 * (1 << 30)) + (5 << 20)
    assert ProxmoxAutoBalloon().decide(_view(used=used, free=512 << 20)) == {}
