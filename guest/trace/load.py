"""A trace parsed and planned once per process (the command checks it, the runtime
replays it; a guest group may replay one file in many guests)."""

from __future__ import annotations

import functools
import os

from guest.trace.parse import TraceError, parse_trace
from guest.trace.replay import ReplayError, ReplayPlan, plan_replay
from pagehint.config import TraceConfig
from pagehint.errors import UsageError


def load_plan(cfg: TraceConfig) -> ReplayPlan:
    """The trace's replay plan; UsageError naming the file (and line) if it is bad."""
    try:
        st = os.stat(cfg.path)
    except OSError as e:
        raise UsageError(f"--trace {cfg.path}: {e.strerror}") from None
    return _load(cfg.path, st.st_mtime_ns, st.st_size, cfg.lenient, cfg.mapping)


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, size: int, lenient: bool, mapping: str) -> ReplayPlan:
    try:
        return plan_replay(parse_trace(path, lenient), mapping)
    except (TraceError, ReplayError) as e:
        raise UsageError(f"--trace {e}") from None
