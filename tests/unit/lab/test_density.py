"""`pagehint density`'s launch, settle and stop logic, against a fake host (no processes).

The fake world: each launched guest boots for a tick, touches for a few ticks
(holding ``touched`` on the host), goes idle, and then the host's holding for it
falls to ``settled`` in steps (a policy reporting in passes). The host swaps what
is over its memory, and with swap full kills the largest guest. The clock moves
only when the logic sleeps.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest

from lab.density import GuestProcess, HostSample, Launched, Phase, Plan, launch_guests

GIB = 1 << 30
MIB = 1 << 20


@dataclass
class FakeGuest:
    name: str
    born: float
    world: World
    touch_ticks: int = 4
    killed: bool = False

    def age(self) -> float:
        return self.world.now - self.born

    def phase(self) -> Phase:
        if self.killed:
            return "gone"
        if self.age() < 1:
            return "booting"
        if self.age() < 1 + self.touch_ticks or self.world.never_idle:
            return "touching"
        return "idle"

    def touch_seconds(self) -> float | None:
        return float(self.touch_ticks) if self.age() >= 1 + self.touch_ticks else None

    def held(self) -> int:
        """What the host holds for it now."""
        w = self.world
        if self.phase() in ("booting", "touching"):
            return int(
                w.boot + (w.touched - w.boot) * min(1.0, (self.age() - 1) / self.touch_ticks)
            )
        # After idle: falls to settled in `steps` steps, one per second.
        idle_for = self.age() - 1 - self.touch_ticks
        done = min(1.0, idle_for / w.steps) if w.steps else 1.0
        return int(w.touched - (w.touched - w.settled) * done)


@dataclass
class World:
    memory: int
    swap: int
    touched: int
    settled: int
    boot: int = 256 * MIB
    steps: int = 0
    never_idle: bool = False
    now: float = 0.0
    guests: list[FakeGuest] = field(default_factory=list)
    kills: int = 0
    launch_times: list[float] = field(default_factory=list)

    def launch(self, i: int) -> Launched:
        g = FakeGuest(f"g{i + 1:02d}", self.now, self)
        self.guests.append(g)
        self.launch_times.append(self.now)
        return g

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def sample(self) -> HostSample:
        live = [g for g in self.guests if not g.killed]
        total = sum(g.held() for g in live)
        if total > self.memory + self.swap and live:
            victim = max(live, key=FakeGuest.held)
            victim.killed = True
            self.kills += 1
            live.remove(victim)
            total = sum(g.held() for g in live)
        return HostSample(
            t=self.now,
            resident_bytes=min(total, self.memory),
            swap_used_bytes=min(self.swap, max(0, total - self.memory)),
            oom_kills=self.kills,
            guests={g.name: g.held() for g in live},
        )


def _plan(**kw: object) -> Plan:
    base: dict[str, object] = {"guests_max": 16, "settle": 5.0, "poll": 1.0}
    base.update(kw)
    return Plan(**base)  # type: ignore[arg-type]


def test_without_hinting_the_guest_that_pushes_the_host_into_swap_ends_the_run() -> None:
    # The cover letter's arithmetic: 5.1 GiB per guest on a 15 GiB host.
    w = World(memory=15 * GIB, swap=4 * GIB, touched=int(5.1 * GIB), settled=int(5.1 * GIB))
    out = launch_guests(_plan(), w.launch, w, sleep=w.sleep)
    assert len(out.launches) == 3
    assert out.first_swap_guest == 3
    assert out.guests_fit == 2
    assert out.stop_reason == "swap"
    assert out.swap_used_end_bytes == 3 * int(5.1 * GIB) - 15 * GIB
    assert out.oom_kills == 0
    # Swap at each launch: none before the third guest ran.
    assert [x.swap_used_at_launch_bytes for x in out.launches] == [0, 0, 0]
    assert [x.ending for x in out.launches] == ["settled"] * 3


def test_with_hinting_guests_fit_until_guests_max() -> None:
    w = World(memory=15 * GIB, swap=4 * GIB, touched=4 * GIB, settled=512 * MIB, steps=3)
    out = launch_guests(_plan(guests_max=6), w.launch, w, sleep=w.sleep)
    assert len(out.launches) == 6
    assert out.first_swap_guest is None
    assert out.guests_fit == 6
    assert out.stop_reason == "guests_max"
    assert out.launches[-1].host_resident_for_guest_bytes == 512 * MIB


def test_next_guest_waits_until_the_last_has_settled() -> None:
    # Idle at t=5 (1 boot + 4 touch); its holding then falls for 3 s (to t=8), then
    # holds still: settled 5 s later, at t=13. Launching at idle would overlap the
    # fall; launching at a fixed time would not wait for it.
    w = World(memory=15 * GIB, swap=4 * GIB, touched=4 * GIB, settled=512 * MIB, steps=3)
    launch_guests(_plan(guests_max=2), w.launch, w, sleep=w.sleep)
    assert w.launch_times[0] == 0
    assert w.launch_times[1] == 13


def test_interval_launches_on_the_clock_whatever_the_guest_does() -> None:
    w = World(memory=15 * GIB, swap=4 * GIB, touched=GIB, settled=GIB, never_idle=True)
    out = launch_guests(_plan(guests_max=3, interval=2.0), w.launch, w, sleep=w.sleep)
    assert w.launch_times == [0, 2, 4]
    assert [x.ending for x in out.launches] == ["interval"] * 3


def test_first_oom_kill_stops_the_run() -> None:
    # No swap: the third guest does not fit, and the host kills the largest.
    w = World(memory=12 * GIB, swap=0, touched=5 * GIB, settled=5 * GIB)
    out = launch_guests(_plan(), w.launch, w, sleep=w.sleep)
    assert out.stop_reason == "oom"
    assert out.oom_kills == 1
    assert len(out.launches) == 3
    assert out.first_oom_guest == 3
    assert out.guests_fit == 2
    assert out.launches[-1].ending in ("killed", "stopped")


def test_memhog_mode_runs_every_job_even_when_the_host_swaps() -> None:
    w = World(memory=15 * GIB, swap=4 * GIB, touched=6 * GIB, settled=6 * GIB)
    out = launch_guests(_plan(guests_max=3, stop_at_swap=False), w.launch, w, sleep=w.sleep)
    assert len(out.launches) == 3
    assert out.first_swap_guest == 3
    assert out.stop_reason == "jobs_done"
    assert out.swap_used_end_bytes == 3 * GIB
    assert [x.touch_s for x in out.launches] == [4.0, 4.0, 4.0]


def test_a_guest_that_never_settles_is_given_up_after_the_timeout() -> None:
    w = World(memory=15 * GIB, swap=4 * GIB, touched=GIB, settled=GIB, never_idle=True)
    out = launch_guests(_plan(guests_max=2, settle_timeout=30.0), w.launch, w, sleep=w.sleep)
    assert [x.ending for x in out.launches] == ["timeout", "timeout"]
    assert w.launch_times == [0, 30]


def test_a_guest_that_exits_moves_the_run_on() -> None:
    w = World(memory=15 * GIB, swap=4 * GIB, touched=GIB, settled=GIB)

    def launch(i: int) -> Launched:
        g = w.launch(i)
        cast(FakeGuest, g).killed = True  # gone at once, with no kill by the host
        return g

    out = launch_guests(_plan(guests_max=2), launch, w, sleep=w.sleep)
    assert [x.ending for x in out.launches] == ["exited", "exited"]
    assert out.oom_kills == 0


class _Running:
    returncode = None

    def poll(self) -> int | None:
        return None


def test_guest_process_reads_marks_from_a_timeline_still_being_written(tmp_path: Path) -> None:
    tl = tmp_path / "g01.timeline.jsonl"
    g = GuestProcess("g01", cast(subprocess.Popen[str], _Running()), tl)
    assert g.phase() == "booting"  # no file yet
    rows = [
        {"t": 0.1, "event": "sample"},
        {"t": 0.5, "event": "mark", "mark": "touch"},
        {"t": 3.25, "event": "mark", "mark": "free"},
        {"t": 3.5, "event": "mark", "mark": "idle"},
    ]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    cut = text.index('"free"')
    tl.write_text(text[:cut])  # the free row half written
    assert g.phase() == "touching"
    assert g.touch_seconds() is None
    with tl.open("a") as f:
        f.write(text[cut:])
    assert g.phase() == "idle"
    assert g.touch_seconds() == pytest.approx(2.75)


def test_a_swap_undone_between_samples_still_ends_the_run() -> None:
    """Swap used back at 0 by the next sample (the pages came back, or were
    discarded): the host's count of swap-outs still says it swapped."""

    class Undone(World):
        def sample(self) -> HostSample:
            s = super().sample()
            outs = 1 if len(self.guests) >= 2 else 0
            return HostSample(s.t, s.resident_bytes, 0, s.oom_kills, s.guests, swap_outs=outs)

    w = Undone(memory=15 * GIB, swap=4 * GIB, touched=4 * GIB, settled=512 * MIB)
    out = launch_guests(_plan(), w.launch, w, sleep=w.sleep)
    assert out.stop_reason == "swap" and out.first_swap_guest == 2 and out.guests_fit == 1
