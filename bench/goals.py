"""A benchmark goal: one figure per round, the target, and the verdict.

Every bench module has ``goals(result) -> list[Goal]``; ``make bench`` prints
each with its median and min–max over the rounds of that run, and writes the
same rows into bench/README.md and the README (bench/report.py). The verdict
is on the median, except for goals that ask for every round to hold (the load
test's "three consecutive runs"), which are judged on the worst round.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Goal:
    name: str
    samples: tuple[float, ...]
    target: float | None  # None: reported, no goal
    unit: str = "×"
    at_most: bool = False  # the target is an upper bound (latencies)
    every_round: bool = False  # judged on the worst round, not the median
    band: bool = False  # samples are ratios to a reference; each within 1 ± target
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    def judged(self) -> float:
        """The figure the verdict is on."""
        if not self.samples:
            return float("nan")
        if not self.every_round:
            return self.median
        return max(self.samples) if self.at_most else min(self.samples)

    def verdict(self) -> str:
        if self.target is None:
            return "reported"
        if not self.samples:
            return "NOT measured"
        if self.band:
            ok = all(abs(x - 1) <= self.target for x in self.samples)
            return "met" if ok else "NOT met"
        v = self.judged()
        ok = v <= self.target if self.at_most else v >= self.target
        return "met" if ok else "NOT met"

    def target_text(self) -> str:
        if self.target is None:
            return "—"
        if self.band:
            return f"1 ± {self.target:g}, every run"
        return f"{'≤' if self.at_most else '≥'} {fmt(self.target, self.unit)}"

    def figure_text(self) -> str:
        if not self.samples:
            return "—"
        med = fmt(self.median, self.unit)
        if len(self.samples) == 1:
            return med
        lo, hi = min(self.samples), max(self.samples)
        return f"{med} ({fmt(lo, self.unit)}–{fmt(hi, self.unit)}, {len(self.samples)} rounds)"

    def line(self) -> str:
        rule = " every round" if self.every_round and self.target is not None else ""
        note = f"  [{self.note}]" if self.note else ""
        return (
            f"{self.name:<52} {self.figure_text():<40} "
            f"goal {self.target_text()}{rule}: {self.verdict()}{note}"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "samples": list(self.samples),
            "median": self.median if self.samples else None,
            "target": self.target,
            "unit": self.unit,
            "at_most": self.at_most,
            "every_round": self.every_round,
            "band": self.band,
            "note": self.note,
            "verdict": self.verdict(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Goal:
        return cls(
            name=d["name"],
            samples=tuple(d["samples"]),
            target=d["target"],
            unit=d["unit"],
            at_most=d["at_most"],
            every_round=d["every_round"],
            band=d.get("band", False),
            note=d.get("note", ""),
        )


def fmt(x: float, unit: str) -> str:
    """A figure as the tables print it: ratios to 2 places, rates with separators."""
    if unit == "×":
        return f"{x:.2f}"
    if unit in ("ms", "%"):
        return f"{x:.3g} {unit}" if x < 10 else f"{x:.1f} {unit}"
    if abs(x) >= 1000:
        return f"{x:,.0f} {unit}".rstrip()
    return f"{x:.3g} {unit}".rstrip()


def spread(xs: list[float], places: int = 2) -> str:
    """``median (min–max)`` of one figure's rounds, for the detail tables."""
    if not xs:
        return "—"
    m, lo, hi = statistics.median(xs), min(xs), max(xs)
    return f"{m:.{places}f} ({lo:.{places}f}–{hi:.{places}f})"
