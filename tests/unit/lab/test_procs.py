"""ProcessGroup: a guest a signal killed is said to be killed, not by its last log line."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from lab.procs import ProcessGroup
from pagehint.errors import UsageError
from tests.integration.procs import wait_until


def test_a_killed_guest_is_reported_as_killed(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path)
    try:
        p = group.start_guest(["--workload", "memhog", "--ram", "64MiB", "--duration", "60"], "g")
        wait_until(lambda: "started" in group.log_text("g"), 30, "the guest's start")
        p.send_signal(signal.SIGKILL)
        with pytest.raises(UsageError, match=r"^guest g failed: killed by SIGKILL$"):
            group.guest_summary(p, "g", timeout=30)
    finally:
        group.close()
