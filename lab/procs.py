"""Start and stop real host and guest processes; nothing is left behind."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from guest.balloon.connection import OomKilled
from pagehint.errors import UsageError
from pagehint.schema import GuestSummary, TimelineRow, decode, read_lines, write_lines

PAGEHINT = [sys.executable, "-m", "pagehint"]


def _child_env() -> dict[str, str]:
    """The environment for a child: this one without PAGEHINT_* settings.

    A lab command passes its children every setting as a flag; a PAGEHINT_*
    variable meant for the lab command (PAGEHINT_CAPACITY=8GiB for loadtest)
    must not reach a child where the same name means something else.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith("PAGEHINT_")}


class ProcessGroup:
    """Child processes started by a lab command; ``close()`` ends every one of them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[str]] = []
        self._files: list[IO[str]] = []

    def start_host(
        self,
        args: Sequence[str],
        name: str = "host",
        env: Mapping[str, str] | None = None,
        listen: str = "127.0.0.1:0",
    ) -> tuple[str, subprocess.Popen[str]]:
        ready = self.workdir / f"{name}.addr"
        ready.unlink(missing_ok=True)
        log = (self.workdir / f"{name}.log").open("w")
        self._files.append(log)
        p = subprocess.Popen(
            [*PAGEHINT, "host", "--listen", listen, "--ready-file", str(ready), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**_child_env(), **(env or {})},
            start_new_session=True,
        )
        self.procs.append(p)
        deadline = time.monotonic() + 30
        while not ready.exists():
            if p.poll() is not None:
                text = (self.workdir / f"{name}.log").read_text().strip().splitlines()
                raise UsageError(f"host failed to start: {text[-1] if text else p.returncode}")
            if time.monotonic() > deadline:
                raise UsageError("host did not start within 30 s")
            time.sleep(0.05)
        addr = ready.read_text().strip()
        ready.unlink()
        return addr, p

    def start_guest(
        self, args: Sequence[str], name: str, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[str]:
        return self._spawn(["guest", "--json", *args], name, subprocess.PIPE, env)

    def start_guest_group(
        self, guests: Sequence[Sequence[str]], name: str, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Several guests in one process (`pagehint guest-group`), one flag list each."""
        spec = self.workdir / f"{name}.guests"
        spec.write_text("".join(shlex.join(g) + "\n" for g in guests))
        # Summaries go to a file, not a pipe: hundreds of them overflow a pipe's
        # buffer, and a group blocked writing would never exit.
        out = (self.workdir / f"{name}.out").open("w")
        self._files.append(out)
        return self._spawn(["guest-group", str(spec), "--json", "--quiet"], name, out, env)

    def _spawn(
        self, args: Sequence[str], name: str, stdout: IO[str] | int, env: Mapping[str, str] | None
    ) -> subprocess.Popen[str]:
        """A pagehint child in its own session, its stderr in ``name``.log."""
        err = (self.workdir / f"{name}.log").open("w")
        self._files.append(err)
        p = subprocess.Popen(
            [*PAGEHINT, *args],
            stdout=stdout,
            stderr=err,
            text=True,
            env={**_child_env(), **(env or {})},
            start_new_session=True,
        )
        self.procs.append(p)
        return p

    def group_summaries(
        self, p: subprocess.Popen[str], name: str, timeout: float
    ) -> tuple[dict[str, GuestSummary], list[str]]:
        """({guest id: summary} for the guests that finished, [one line per failure])."""
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            return {}, [f"guest group {name} did not finish within {timeout:.0f} s"]
        summaries: dict[str, GuestSummary] = {}
        for line in (self.workdir / f"{name}.out").read_text().splitlines():
            if line.strip():
                s = decode(GuestSummary, line)
                summaries[s["guest_id"]] = s
        # A guest the host's OOM killer ended wrote its summary (oom_killed) and a
        # line: a result, not a failure (the group then exits 3).
        killed = {f"guest {g}: " for g, s in summaries.items() if s.get("oom_killed")}
        errors = [
            line.removeprefix("pagehint guest-group: ")
            for line in self.log_text(name).splitlines()
            if line.startswith("pagehint guest-group: ")
            and not any(line.startswith(f"pagehint guest-group: {k}") for k in killed)
        ]
        if p.returncode == OomKilled.exit_status and killed:
            return summaries, errors
        if p.returncode != 0 and not errors:
            lines = self.log_text(name).strip().splitlines()
            why = _killed(p.returncode) or (lines[-1] if lines else f"exit {p.returncode}")
            errors.append(f"guest group {name} failed: {why}")
        return summaries, errors

    def log_text(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text()

    def guest_summary(
        self, p: subprocess.Popen[str], name: str, timeout: float, oom_ok: bool = False
    ) -> GuestSummary:
        """The guest's summary once it ended; a UsageError if it failed (``oom_ok``:
        ended by the host's OOM killer, exit 3 with its summary, is not a failure)."""
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            raise UsageError(f"guest {name} did not finish within {timeout:.0f} s") from None
        if oom_ok and p.returncode == OomKilled.exit_status and out.strip():
            s = decode(GuestSummary, out.strip().splitlines()[-1])
            if s.get("oom_killed"):
                return s
        if p.returncode != 0:
            lines = (self.workdir / f"{name}.log").read_text().strip().splitlines()
            # A signal's death leaves no line of its own: the log's last is just
            # whatever the guest did before.
            last = _killed(p.returncode) or (lines[-1] if lines else f"exit {p.returncode}")
            raise UsageError(f"guest {name} failed: {last}")
        lines = out.strip().splitlines()
        if not lines:
            raise UsageError(f"guest {name} printed no summary")
        return decode(GuestSummary, lines[-1])

    def stop(self, p: subprocess.Popen[str], timeout: float = 15) -> int | None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        return p.returncode

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        for f in self._files:
            f.close()
        self._files.clear()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a live process has used (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name may hold spaces: fields are counted after its ')'.
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _killed(returncode: int) -> str | None:
    """ "killed by SIGKILL" for a child a signal ended (a negative return code)."""
    if returncode >= 0:
        return None
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"killed by {name}"


def read_timeline(path: Path) -> list[TimelineRow]:
    return read_lines(TimelineRow, path)


def write_timelines(
    path: Path,
    rows: Mapping[str, Sequence[TimelineRow]],
    label: Callable[[str], Mapping[str, str]],
) -> None:
    """Every run's timeline rows in one JSON-lines file, each row with its run's labels."""
    write_lines(path, ({**label(name), **r} for name, rs in rows.items() for r in rs))
