"""Where ``make bench``'s figures go: bench/results.json, then the tables in
bench/README.md and the README, rewritten from it.

results.json keeps, per bench, the latest run's date, commit, machine, raw
result and goals; a run of some benches (``make bench ONLY=wire``) replaces
only theirs. Every table between ``<!-- bench:NAME -->`` and ``<!-- /bench -->``
markers is generated: ``goals`` (every goal of every bench), and one per bench
that has a ``table(result)`` function. Nothing between the markers is typed.

    .venv/bin/python -m bench.report      # re-render from results.json alone
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from bench.goals import Goal

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results.json"
DOCS = (ROOT / "bench" / "README.md", ROOT / "README.md")
_BLOCK = re.compile(r"(<!-- bench:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /bench -->)", re.S)


def provenance() -> dict[str, str]:
    """When and on what a run was made: the date, the commit (``+dirty`` if the
    tree had changes), Python, the CPU count."""

    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    # The files a run itself rewrites do not make the code measured dirty.
    mine = (":!bench/results.json", ":!bench/README.md", ":!README.md")
    if git("status", "--porcelain", "--untracked-files=no", "--", ".", *mine):
        commit += "+dirty"
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "python": platform.python_version(),
    }


class ResultsError(Exception):
    """bench/results.json cannot be used; the message says why, in one line."""


def load() -> dict[str, Any]:
    if not RESULTS.exists():
        return {}
    try:
        data = json.loads(RESULTS.read_text())
    except (OSError, ValueError) as e:
        raise ResultsError(f"{RESULTS}: cannot read: {e}") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, dict) and {"date", "commit", "python", "result", "goals"} <= v.keys()
        for v in data.values()
    ):
        raise ResultsError(f"{RESULTS}: not a record of bench runs (remove it to start afresh)")
    return data


def save(bench: str, result: dict[str, Any], goals: list[Goal], stamp: dict[str, str]) -> None:
    data = load()
    data[bench] = {**stamp, "result": result, "goals": [g.as_json() for g in goals]}
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, RESULTS)  # an interrupted write leaves the old record whole


def goals_of(bench: str, entry: dict[str, Any]) -> list[Goal]:
    """A recorded run's goals, judged by the bench's goals() as it is now (a goal
    refined after the run is applied to the same figures), else as recorded."""
    try:
        module = importlib.import_module(f"bench.{bench}")
        goals: list[Goal] = module.goals(entry["result"])
        return goals
    except (ImportError, AttributeError, KeyError, TypeError, ValueError):
        # A bench since removed, or a record older than its goals(): as recorded.
        return [Goal.from_json(x) for x in entry["goals"]]


def goals_table(data: dict[str, Any]) -> str:
    rows = [
        "| goal | this machine: median (min–max, rounds) | target | verdict | run |",
        "|---|---|---|---|---|",
    ]
    for bench in sorted(data):
        entry = data[bench]
        for g in goals_of(bench, entry):
            rule = ", every round" if g.every_round and g.target is not None else ""
            verdict = g.verdict()
            shown = f"**{verdict}**" if verdict.startswith("NOT") else verdict
            note = f" — {g.note}" if g.note else ""
            rows.append(
                f"| {g.name}{note} | {g.figure_text()} | {g.target_text()}{rule} | {shown} "
                f"| `{bench}` {entry['date'][:10]} {entry['commit']} |"
            )
    return "\n".join(rows) + "\n"


def bench_table(bench: str, entry: dict[str, Any]) -> str | None:
    try:
        module = importlib.import_module(f"bench.{bench}")
    except ImportError:
        return None
    table = getattr(module, "table", None)
    if table is None:
        return None
    try:
        body: str = table(entry["result"])
    except (KeyError, TypeError, ValueError):
        return None  # a record older than its table: the block keeps what it had
    m = entry["result"].get("machine", {})
    steal = f", steal {m['steal_pct']}%" if "steal_pct" in m else ""
    stamp = f"*{entry['date']}, commit {entry['commit']}, Python {entry['python']}{steal}.*\n"
    return stamp + "\n" + body


def render(data: dict[str, Any] | None = None) -> list[Path]:
    """Rewrite every generated block in the docs; returns the files changed."""
    data = load() if data is None else data
    blocks: dict[str, str] = {"goals": goals_table(data)}
    for bench, entry in data.items():
        t = bench_table(bench, entry)
        if t is not None:
            blocks[bench] = t
    changed = []
    for doc in DOCS:
        text = doc.read_text()

        def fill(m: re.Match[str]) -> str:
            body = blocks.get(m["name"])
            if body is None:
                return m.group(0)  # a bench not yet run here: left as it was
            return m.group(1) + body + m.group(4)

        new = _BLOCK.sub(fill, text)
        if new != text:
            doc.write_text(new)
            changed.append(doc)
    return changed


if __name__ == "__main__":
    try:
        for path in render():
            print(f"rewrote {path.relative_to(ROOT)}")
    except ResultsError as e:
        raise SystemExit(f"error: {e}") from None
