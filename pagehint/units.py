"""Parsing and formatting of byte sizes and durations given on the command line."""

from __future__ import annotations

import re

from pagehint.errors import UsageError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tb": 1000**4,
    "tib": 1 << 40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
# Sane upper bounds: nothing pagehint sizes is near an exbibyte, and no run or
# timeout is meant to last over 30 days ("forever" is no duration at all).
MAX_SIZE = 1 << 60
MAX_SECONDS = 30 * 24 * 3600.0


def parse_size(text: str, what: str = "size") -> int:
    """Parse '4GiB', '512M', '4096' into bytes; a bad value is a UsageError."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise UsageError(f"bad {what} {text!r}: expected a number with a unit, like 4GiB or 512MiB")
    number, unit = m.group(1), m.group(2).lower()
    if unit not in _UNITS:
        raise UsageError(f"bad {what} {text!r}: unknown unit {m.group(2)!r} (use KiB, MiB, GiB)")
    if len(number) > 24:
        raise UsageError(f"bad {what} {text!r}: too large")
    value = float(number) * _UNITS[unit]
    if not value <= MAX_SIZE:
        raise UsageError(f"bad {what} {text!r}: too large (at most 1 EiB)")
    if value != int(value):
        raise UsageError(f"bad {what} {text!r}: not a whole number of bytes")
    return int(value)


def format_size(n: float) -> str:
    """Human-readable binary size: 1536 -> '1.5 KiB'."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            if unit == "B":
                return f"{sign}{int(n)} B"
            return f"{sign}{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def exact_size(n: int) -> str:
    """``n`` bytes as the largest unit that holds it whole ("72MiB", "4GiB", "4096"):
    text parse_size reads back to the same number."""
    for shift, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def parse_seconds(text: str, what: str = "duration") -> float:
    """Parse '30', '30s', '2m', '500ms' into seconds."""
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", str(text))
    if not m:
        raise UsageError(f"bad {what} {text!r}: expected seconds, like 30 or 2.5s or 500ms")
    if len(m.group(1)) > 24:
        raise UsageError(f"bad {what} {text!r}: too long (at most 30 days)")
    value = float(m.group(1))
    scale = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]
    seconds = value * scale
    if not seconds <= MAX_SECONDS:
        raise UsageError(f"bad {what} {text!r}: too long (at most 30 days)")
    return seconds
