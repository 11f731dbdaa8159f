"""Regenerate README.md's sample outputs from real runs.

    make readme-samples                                  # every sample, a few minutes
    .venv/bin/python -m scripts.readme_samples           # the same
    .venv/bin/python -m scripts.readme_samples --only loadtest,sweep
    .venv/bin/python -m scripts.readme_samples --list    # the samples and their commands
    .venv/bin/python -m scripts.readme_samples --check   # markers and stamps only; runs nothing

Every output README.md shows sits between marker comments, under a stamp that
says what printed it, when, and at which commit:

    <!-- sample: loadtest -->
    *Output of `.venv/bin/pagehint loadtest ...`, run 2026-12-03 at commit 70bb42b
    on 2 CPUs (load 0.4).*
    ```text
    ...exactly what that command printed on stdout...
    ```
    <!-- /sample -->

Each command runs as the stamp shows it, from a scratch folder of its own whose
`.venv` and `examples` are links to this checkout's (so files a command writes,
like `runs/...`, go there, not into the checkout). The commit is
`git rev-parse --short HEAD`, with "+dirty" when the checkout differs from it
(the samples this script writes do not count). A sample that cannot run here
(compose-status needs a Docker engine that answers) is left as it is, and said so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGEHINT = ".venv/bin/pagehint"
TRACE = "examples/traces/python-grow-shrink.trace.gz"
COMPOSE_PROJECT = "readme-sample"


def keep_all(stdout: str) -> str:
    return stdout


def from_line_starting(prefix: str) -> Callable[[str], str]:
    """The output from its first line that starts with ``prefix``, to the end."""

    def select(stdout: str) -> str:
        lines = stdout.splitlines()
        for i, line in enumerate(lines):
            if line.startswith(prefix):
                return "\n".join(lines[i:])
        raise SampleError(f"no line starting with {prefix!r} in the output")

    return select


def up_to_blank_line(n: int) -> Callable[[str], str]:
    """The output up to (not including) its ``n``-th blank line."""

    def select(stdout: str) -> str:
        out: list[str] = []
        for line in stdout.splitlines():
            if not line.strip():
                n_seen = sum(1 for x in out if not x.strip()) + 1
                if n_seen == n:
                    return "\n".join(out)
            out.append(line)
        raise SampleError(f"fewer than {n} blank lines in the output")

    return select


def only_lines_starting(*prefixes: str) -> Callable[[str], str]:
    """The output's lines that start with one of ``prefixes``, in order."""

    def select(stdout: str) -> str:
        lines = [x for x in stdout.splitlines() if x.startswith(prefixes)]
        if not lines:
            raise SampleError(f"no line starting with any of {prefixes!r} in the output")
        return "\n".join(lines)

    return select


@dataclass(frozen=True)
class Image:
    produced: str  # the file's name, somewhere under the run's scratch folder
    dest: str  # where the README shows it, relative to the README's folder
    alt: str


@dataclass(frozen=True)
class Sample:
    """One marked block of README.md and the command whose output fills it."""

    name: str
    command: str  # run by bash, exactly as the stamp shows it
    text: Callable[[str], str] | None = keep_all  # stdout -> the block; None: no text
    image: Image | None = None  # a plot the command writes, shown instead of text
    setup: str | None = None  # run first (the stamp says "after" it)
    teardown: str | None = None  # run last, whatever happened (not in the stamp)
    in_checkout: bool = False  # run in the checkout, not a scratch folder
    needs_docker: bool = False


SAMPLES: tuple[Sample, ...] = (
    Sample(
        "demo-plot",
        f"{PAGEHINT} demo",
        text=None,
        image=Image("timeline.png", "docs/demo.png", "demo: host memory per guest"),
    ),
    Sample("compare", f"{PAGEHINT} compare --ram 1GiB"),
    # The same command: the plot comes from the same run as the table.
    Sample(
        "compare-plot",
        f"{PAGEHINT} compare --ram 1GiB",
        text=None,
        image=Image("timeline.png", "docs/compare.png", "compare: host memory per policy"),
    ),
    Sample("loadtest", f"{PAGEHINT} loadtest --guests 16 --ram 256MiB --duration 20 --ramp 2"),
    Sample(
        "loadtest-host-memory",
        f"{PAGEHINT} loadtest --guests 4 --ram 256MiB --duration 8 "
        "--host-memory 300MiB --swap 64MiB",
        text=only_lines_starting("host memory", "host swap"),
    ),
    Sample(
        "sweep",
        f"{PAGEHINT} sweep --workload memhog --ram 512MiB --duration 8 "
        "--set policy=reporting,bitmap --set delay=0.5,2",
    ),
    # The cover letter's launch test at full scale: about 13 minutes on 2 cores.
    Sample("density", f"{PAGEHINT} density"),
    # The launch test at 1/16 scale on real memory: about 4 minutes here. The
    # policy table only (the per-guest table is the full-scale sample's shape).
    Sample(
        "density-shm-16",
        f"{PAGEHINT} density --backend shm --host-memory 960MiB --swap 256MiB "
        "--guest-ram 320MiB --touch 256MiB --boot-footprint 15MiB --vmm-overhead 4608KiB",
        text=up_to_blank_line(2),
    ),
    Sample(
        "density-plot",
        f"{PAGEHINT} density",
        text=None,
        image=Image(
            "density.png", "docs/density.png", "density: host resident and swap per policy"
        ),
    ),
    Sample(
        "trace-summary",
        f"{PAGEHINT} guest --trace {TRACE} --speed max --trace-map compact "
        "--policy reporting --delay 0",
        text=from_line_starting("trace "),
    ),
    Sample(
        "compose-status",
        f"PROJECT={COMPOSE_PROJECT} deploy/compose.sh status",
        setup="deploy/compose.sh image && "
        f"GUESTS=2 PROJECT={COMPOSE_PROJECT} deploy/compose.sh up && sleep 20",
        teardown=f"PROJECT={COMPOSE_PROJECT} deploy/compose.sh down",
        in_checkout=True,
        needs_docker=True,
    ),
)
BY_NAME = {s.name: s for s in SAMPLES}


class SampleError(Exception):
    """A sample could not be made, or README.md's markers are wrong."""


# ---- the README's marked blocks ------------------------------------------------------

OPEN = re.compile(r"^<!-- sample: ([a-z0-9-]+) -->$", re.M)
CLOSE = "<!-- /sample -->"
STAMP = re.compile(
    r"^\*(?:Output|Plot) of `(?P<command>[^`]+)`(?: after `(?P<setup>[^`]+)`)?, "
    r"run (?P<date>\d{4}-\d{2}-\d{2}) at commit (?P<commit>[0-9a-f]{7,40}(?:\+dirty)?) "
    r"on (?P<cpus>\d+) CPUs? \(load (?P<load>\d+\.\d)\)\.\*$"
)
# A sample that could not be regenerated yet (needs what this machine lacks).
PENDING = re.compile(
    r"^\*Not regenerated yet: `(?P<command>[^`]+)`(?: after `(?P<setup>[^`]+)`)? "
    r"needs (?P<needs>[^;]+); (?P<why>.+)\*$"
)


def blocks(text: str) -> dict[str, str]:
    """Each marked block's body (between its two markers), by name."""
    found: dict[str, str] = {}
    pos = 0
    while m := OPEN.search(text, pos):
        name = m.group(1)
        end = text.find("\n" + CLOSE, m.end())
        nxt = OPEN.search(text, m.end())
        if end < 0 or (nxt is not None and nxt.start() < end):
            raise SampleError(f"README: <!-- sample: {name} --> has no {CLOSE} before the next")
        if name in found:
            raise SampleError(f"README: sample {name} is marked twice")
        found[name] = text[m.end() + 1 : end + 1]
        pos = end + 1 + len(CLOSE)
    if text.count(CLOSE) != len(found):
        raise SampleError(f"README: {text.count(CLOSE)} {CLOSE} for {len(found)} samples")
    return found


def rewrite(text: str, bodies: Mapping[str, str]) -> str:
    """``text`` with the named blocks' bodies replaced (each ends with a newline)."""
    have = blocks(text)
    missing = sorted(set(bodies) - set(have))
    if missing:
        raise SampleError(f"README has no marked block for {', '.join(missing)}")
    out: list[str] = []
    pos = 0
    for m in OPEN.finditer(text):
        name = m.group(1)
        start = m.end() + 1
        end = start + len(have[name])
        out.append(text[pos:start])
        body = bodies.get(name, have[name])
        out.append(body + "\n" if body and not body.endswith("\n") else body)
        pos = end
    out.append(text[pos:])
    return "".join(out)


@dataclass(frozen=True)
class Stamp:
    date: str
    commit: str
    cpus: int
    load: float


def render(sample: Sample, stamp: Stamp, output: str) -> str:
    """A block's body: the stamp, then the output (or the image)."""
    after = f" after `{sample.setup}`" if sample.setup else ""
    when = (
        f"run {stamp.date} at commit {stamp.commit} on {stamp.cpus} "
        f"CPU{'s' if stamp.cpus != 1 else ''} (load {stamp.load:.1f})."
    )
    if sample.image is not None:
        return (
            f"![{sample.image.alt}]({sample.image.dest})\n\n"
            f"*Plot of `{sample.command}`{after}, {when}*\n"
        )
    lines = [line.rstrip() for line in output.strip("\n").splitlines()]
    return (
        f"*Output of `{sample.command}`{after}, {when}*\n\n```text\n" + "\n".join(lines) + "\n```\n"
    )


def problems(text: str, samples: Sequence[Sample] = SAMPLES) -> list[str]:
    """What is wrong with README's samples: a marker, a stamp or a command missing or
    not this script's, or an output shown outside any marker."""
    try:
        have = blocks(text)
    except SampleError as e:
        return [str(e)]
    found: list[str] = []
    known = {s.name: s for s in samples}
    for name in sorted(set(known) - set(have)):
        found.append(f"sample {name}: no <!-- sample: {name} --> block in README")
    for name, body in have.items():
        s = known.get(name)
        if s is None:
            found.append(f"sample {name}: marked in README but not one this script makes")
            continue
        first = body.lstrip("\n").splitlines()[0] if body.strip() else ""
        if s.image is not None:
            first = next((x for x in body.splitlines() if x.startswith("*")), "")
            if f"]({s.image.dest})" not in body:
                found.append(f"sample {name}: does not show {s.image.dest}")
        m = STAMP.match(first) or (PENDING.match(first) if s.needs_docker else None)
        if m is None:
            found.append(f"sample {name}: no stamp (date, commit, command): {first[:80]!r}")
            continue
        if m.group("command") != s.command or m.group("setup") != s.setup:
            found.append(f"sample {name}: stamped command is not {s.command!r}")
        if s.text is not None and "```text\n" not in body:
            found.append(f"sample {name}: no ```text block of output")
    found += [f"unmarked output in README line {n}: {line!r}" for n, line in unmarked(text)]
    return found


# A code block outside the markers is a command (or input) when every line starts
# with one of these; the few that are neither (diagrams, trees) are named here.
COMMAND_STARTS = (
    ".venv/bin/",
    "make ",
    "docker",
    "kubectl ",
    "cat ",
    "trace-cmd ",
    "mount ",
    "cd ",
    "echo ",
    "#",
    "--",
    "EOF",
    "...",
    "deploy/",
)
ENV_PREFIX = re.compile(r"^[A-Z][A-Z0-9_]*=\S* ")  # VAR=value command
NOT_OUTPUT = ("guest process", "protos/")


def unmarked(text: str) -> list[tuple[int, str]]:
    """Code blocks outside sample markers that look like output: (line number, first line)."""
    lines = text.splitlines()
    found: list[tuple[int, str]] = []
    inside = False  # between sample markers
    i = 0
    while i < len(lines):
        line = lines[i]
        if OPEN.match(line):
            inside = True
        elif line == CLOSE:
            inside = False
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            if not inside and line == "```":  # a language tag: source, not output
                _judge(lines[i + 1 : j], i + 2, found)
            i = j + 1
            continue
        if (
            line.startswith("    ")
            and i > 0
            and not lines[i - 1].strip()
            and _not_in_list(lines, i)
        ):
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            if not inside:
                _judge(lines[i:j], i + 1, found)
            i = j
            continue
        i += 1
    return found


def _not_in_list(lines: list[str], i: int) -> bool:
    k = i - 1
    while k >= 0 and not lines[k].strip():
        k -= 1
    prev = lines[k] if k >= 0 else ""
    return not re.match(r"^(\s+|[-*] |\d+\. )", prev) or prev.startswith("    ")


def _judge(block: list[str], first_no: int, found: list[tuple[int, str]]) -> None:
    body = [x.strip() for x in block if x.strip()]
    if not body or body[0].startswith(NOT_OUTPUT):
        return
    joined: list[str] = []
    for x in body:  # a line after one ending in a backslash continues it
        if joined and joined[-1].endswith("\\"):
            joined[-1] += " " + x
        else:
            joined.append(x)
    if not all(x.startswith(COMMAND_STARTS) or ENV_PREFIX.match(x) for x in joined):
        found.append((first_no, body[0]))


# ---- running the commands ------------------------------------------------------------


def git(*args: str) -> str:
    r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return r.stdout.strip()


def commit_stamp(readme: Path) -> str:
    """Short HEAD, "+dirty" if anything but the samples' own files differs from it."""
    try:
        head = git("rev-parse", "--short", "HEAD")
        ours = [readme, *(readme.parent / s.image.dest for s in SAMPLES if s.image)]
        exclude = [f":(exclude){p.resolve().relative_to(ROOT)}" for p in ours if _in_root(p)]
        dirty = git("status", "--porcelain", "--", ".", *exclude)
    except (OSError, subprocess.CalledProcessError) as e:
        raise SampleError(f"cannot read the commit: {e}") from None
    return head + ("+dirty" if dirty else "")


def _in_root(p: Path) -> bool:
    return p.resolve().is_relative_to(ROOT)


def docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _env() -> dict[str, str]:
    # The user's PAGEHINT_* settings would change what the commands print.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGEHINT_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _shell(command: str, cwd: Path, timeout: float, log: Callable[[str], None]) -> str:
    log(f"  $ {command}")
    r = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if r.returncode != 0:
        tail = "\n".join(r.stderr.strip().splitlines()[-5:])
        raise SampleError(f"`{command}` exited with {r.returncode}:\n{tail}")
    return r.stdout


@dataclass
class Ran:
    stdout: str
    folder: Path
    load: float


def run(sample: Sample, scratch: Path, log: Callable[[str], None], timeout: float) -> Ran:
    """Run a sample's command (after its setup; its teardown always)."""
    folder = ROOT if sample.in_checkout else Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    if not sample.in_checkout:
        (folder / ".venv").symlink_to(ROOT / ".venv")
        (folder / "examples").symlink_to(ROOT / "examples")
    load = os.getloadavg()[0]
    try:
        if sample.setup:
            _shell(sample.setup, folder, timeout, log)
        out = _shell(sample.command, folder, timeout, log)
    finally:
        if sample.teardown:
            try:
                _shell(sample.teardown, folder, timeout, log)
            except (SampleError, subprocess.TimeoutExpired) as e:
                log(f"  teardown failed: {e}")
    return Ran(out, folder, load)


def produce(
    sample: Sample, ran: Ran, stamp: Stamp, readme_dir: Path
) -> tuple[str, Path | None, Path | None]:
    """The block's body, and the image to copy (from, to), if any."""
    if sample.image is None:
        assert sample.text is not None
        return render(sample, stamp, sample.text(ran.stdout)), None, None
    made = sorted(ran.folder.rglob(sample.image.produced))
    if len(made) != 1:
        raise SampleError(
            f"expected one {sample.image.produced} under the run's folder, found {len(made)}"
            " (is matplotlib installed? pip install -e '.[lab]')"
        )
    return render(sample, stamp, ""), made[0], readme_dir / sample.image.dest


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.readme_samples",
        description="Rerun the commands whose output README.md shows; rewrite those samples.",
    )
    p.add_argument("--only", help="comma list of samples (default: all; see --list)")
    p.add_argument("--list", action="store_true", help="list the samples and their commands")
    p.add_argument("--check", action="store_true", help="check markers and stamps; run nothing")
    p.add_argument("--readme", type=Path, default=README, help="the README to rewrite")
    p.add_argument("--timeout", type=float, default=900, help="seconds per command (900)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folders")
    a = p.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if a.list:
        for s in SAMPLES:
            note = " (needs a Docker engine)" if s.needs_docker else ""
            pre = f"{s.setup}; " if s.setup else ""
            print(f"{s.name:<15} {pre}{s.command}{note}")
        return 0
    text = a.readme.read_text(encoding="utf-8")
    if a.check:
        found = problems(text)
        for x in found:
            log(x)
        return 1 if found else 0
    chosen = list(SAMPLES)
    if a.only:
        names = [n.strip() for n in a.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            p.error(f"--only: no sample {', '.join(unknown)} (have: {', '.join(BY_NAME)})")
        chosen = [BY_NAME[n] for n in names]
    if not (ROOT / PAGEHINT).exists():
        log(f"no {PAGEHINT}: run `make demo` or `make test` once to set it up")
        return 2
    try:
        blocks(text)
        stamp_commit = commit_stamp(a.readme)
    except SampleError as e:
        log(str(e))
        return 2
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    cpus = os.cpu_count() or 1
    scratch = Path(tempfile.mkdtemp(prefix="readme-samples-"))
    bodies: dict[str, str] = {}
    images: list[tuple[Path, Path]] = []
    failed: list[str] = []
    runs: dict[str, Ran] = {}  # by command: samples of one command share its run
    t_all = time.monotonic()
    try:
        for s in chosen:
            if s.needs_docker and not docker_answers():
                log(f"{s.name}: skipped, no Docker engine answers here; its block is left as it is")
                continue
            log(f"{s.name}:")
            t0 = time.monotonic()
            try:
                key = f"{s.setup}\n{s.command}"
                if key not in runs:
                    runs[key] = run(s, scratch, log, a.timeout)
                ran = runs[key]
                stamp = Stamp(date, stamp_commit, cpus, ran.load)
                body, src, dest = produce(s, ran, stamp, a.readme.parent)
            except (SampleError, subprocess.TimeoutExpired) as e:
                log(f"  FAILED: {e}")
                failed.append(s.name)
                continue
            bodies[s.name] = body
            if src is not None and dest is not None:
                images.append((src, dest))
            log(f"  done in {time.monotonic() - t0:.0f} s")
        for src, dest in images:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        new = rewrite(text, bodies)
        if new != text:
            a.readme.write_text(new, encoding="utf-8")
    finally:
        if a.keep:
            log(f"scratch folders kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    log(
        f"rewrote {len(bodies)} sample(s) in {a.readme} in {time.monotonic() - t_all:.0f} s"
        f" (commit {stamp_commit})" + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
