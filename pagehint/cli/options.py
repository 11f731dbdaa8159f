"""What the lab commands' flags share: the folder a run claims for itself, and the
help texts that name what a user may give (policies, shipped scenarios, workloads).

A run's folder is its own. Without ``--out`` it is ``runs/PREFIXTIME`` made with
``mkdir(exist_ok=False)``, or ``runs/PREFIXTIME-2``, ``-3``, … when another run
started in the same second made that one first: two runs never write the same
files (two demos in one folder wrote each other's timelines and both failed).
``--out`` names a new folder or an empty one; a folder that already holds
anything (an earlier run's files) is refused, not mixed with this run's. A
folder given that exists is claimed by creating ``.pagehint-run`` in it
exclusively, so two runs given the same empty folder at once cannot both have it.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping
from pathlib import Path

from pagehint.cli.guest import shipped_scenarios
from pagehint.cli.support import add_flag, convert
from pagehint.config import BUILTIN_POLICIES, WORKLOADS, HostConfig
from pagehint.errors import UsageError
from pagehint.units import format_size, parse_size

RUNS = Path("runs")
CLAIM = ".pagehint-run"  # in a folder given with --out that existed: this run's
MAX_SUFFIX = 1000

PLUGIN_FORMS = "FILE.py:CLASS | MODULE:CLASS"
OUT_HELP = (
    "output folder: a new or empty one (one holding an earlier run is refused, not mixed); "
    "default: a new runs/{name}TIME folder"
)


def out_help(prefix: str) -> str:
    return OUT_HELP.format(name=prefix)


def policies_help(lead: str) -> str:
    """``lead``, then the policies one may name: the built-ins and one's own."""
    return f"{lead}: {' | '.join(BUILTIN_POLICIES)}, or your own ({PLUGIN_FORMS})"


def scenario_help(lead: str = "scenario TOML file, or a shipped one") -> str:
    return f"{lead}: {', '.join(shipped_scenarios())}"


def workload_help() -> str:
    return "built-in workload: " + " | ".join(WORKLOADS)


def run_folder(out: str | None, prefix: str) -> Path:
    """The folder this run writes, made or claimed for it alone (see the module)."""
    if out:
        return _claim(Path(out))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        RUNS.mkdir(parents=True, exist_ok=True)
        for n in range(1, MAX_SUFFIX + 1):
            path = RUNS / (f"{prefix}{stamp}" + (f"-{n}" if n > 1 else ""))
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return path
    except OSError as e:
        raise UsageError(f"cannot create a run folder in {RUNS}: {e.strerror}") from None
    raise UsageError(f"{RUNS}/{prefix}{stamp}: {MAX_SUFFIX} runs this second already")


def _claim(out: Path) -> Path:
    """``out`` new, or empty and claimed: refused if it holds anything else."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        held = sorted(p.name for p in out.iterdir())
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create the folder: {e.strerror}") from None
    if held:
        shown = ", ".join(held[:3]) + (", …" if len(held) > 3 else "")
        raise UsageError(
            f"--out {out}: already holds files ({shown}); give a new or empty folder, "
            "or no --out for a new one under runs/"
        )
    try:
        with (out / CLAIM).open("x", encoding="utf-8") as f:
            f.write(f"pid {os.getpid()}\n")  # not the command line: it may hold a token
    except FileExistsError:
        raise UsageError(f"--out {out}: another run took this folder just now") from None
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write there: {e.strerror}") from None
    return out


# ---- the host's own memory, for the lab commands that start a host ---------------------


def add_host_memory_flags(p: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """``--host-memory`` and ``--swap``, passed to the host the command starts."""
    add_flag(
        p,
        env,
        "--host-memory",
        default=None,
        help="give the host this much memory of its own, with swap and an OOM killer "
        "(pagehint host --host-memory); default: unlimited",
    )
    add_flag(p, env, "--swap", default=None, help="the host's swap (with --host-memory)")


def host_memory_args(a: argparse.Namespace, backend: str, guest_ram: int) -> tuple[str, ...]:
    """The host flags for ``--host-memory``/``--swap``, checked as the host checks them
    (one line, before anything starts), and a guest of ``guest_ram`` with the host's
    VMM overhead must fit them (the host would refuse it: nothing could run); ()
    when neither was given."""
    if a.host_memory is None:
        if a.swap is not None:
            raise UsageError("--swap needs --host-memory (swap for which memory?)")
        return ()
    memory = convert(a.host_memory, lambda s: parse_size(s, "size"), "--host-memory")
    swap = 0 if a.swap is None else convert(a.swap, lambda s: parse_size(s, "size"), "--swap")
    cfg = HostConfig(host_memory_bytes=memory, swap_bytes=swap, backend=backend)  # its checks
    if guest_ram + cfg.vmm_overhead_bytes > memory + swap:
        raise UsageError(
            f"a guest of {format_size(guest_ram)} with the host's VMM overhead "
            f"{format_size(cfg.vmm_overhead_bytes)} exceeds --host-memory "
            f"{format_size(memory)} + --swap {format_size(swap)}: the host would refuse it"
        )
    return ("--host-memory", str(memory), "--swap", str(swap))
