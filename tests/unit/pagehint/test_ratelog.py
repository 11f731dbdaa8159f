from __future__ import annotations

import logging

from pagehint.ratelog import RateLimitedLog
from tests.logs import log_lines


def test_one_line_per_kind_per_interval_then_a_count() -> None:
    lines = log_lines()
    log = RateLimitedLog(logging.getLogger("host.sessions"), interval=10.0)
    for i in range(100):
        log.note("a", f"a {i}", now=float(i) / 100)
    log.note("b", "b 0", now=0.5)
    assert lines == ["a 0", "b 0"]
    log.note("a", "a late", now=11.0)
    assert lines[-1] == "a late (and 99 more like this before it)"
    log.note("b", "b again", now=12.0)
    log.flush(now=12.5)
    assert lines[-1] == "b again (and 0 more like this before it)" or lines[-1] == "b again"
    log.note("b", "b x", now=13.0)
    log.flush(force=True, now=13.1)
    assert lines[-1].startswith("1 more like this")
