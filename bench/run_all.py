"""Run the benchmarks, print every goal with min–max and a verdict, and rewrite
the figures in bench/README.md and the README from this run (``make bench``).

    .venv/bin/python -m bench.run_all [--only wire,loadtest] [--no-write]

``--only`` runs some benches (names without ``bench_``); the others keep their
last recorded run in bench/results.json, each table saying when and at which
commit it was measured.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys

import bench
from bench import report
from bench.goals import Goal


def available() -> list[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_")
    )


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__)
    p.add_argument("--only", default="", help="comma-separated benches, e.g. wire,replay")
    p.add_argument("--no-write", action="store_true", help="print only; touch no file")
    a = p.parse_args(argv)
    names = available()
    if a.only:
        wanted = [f"bench_{x.strip().removeprefix('bench_')}" for x in a.only.split(",")]
        unknown = [w for w in wanted if w not in names]
        if unknown:
            short = ", ".join(n.removeprefix("bench_") for n in names)
            p.exit(2, f"error: no bench {', '.join(unknown)} (there are: {short})\n")
        names = wanted
    a.names = names
    return a


def main(argv: list[str] | None = None) -> None:
    a = _args(argv)
    if not a.no_write:
        try:
            report.load()  # a results file we could not add to: say so before an hour's run
        except report.ResultsError as e:
            raise SystemExit(f"error: {e}") from None
    goals: list[Goal] = []
    failed: list[str] = []
    for name in a.names:
        print(f"== {name}", flush=True)
        stamp = report.provenance()  # the commit measured, taken before the run
        try:
            module = importlib.import_module(f"bench.{name}")
            result = module.main()
            print(json.dumps(result, indent=2), flush=True)
            mine: list[Goal] = module.goals(result) if hasattr(module, "goals") else []
            if not a.no_write:
                report.save(name, result, mine, stamp)
        except Exception as e:  # one broken bench must not cost the others' figures
            failed.append(f"{name}: {type(e).__name__}: {e}")
            print(f"{name} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            continue
        goals.extend(mine)
    # Each goal beside its figure, at the end where it is read.
    print("\n== goals (this run: median, min–max over its rounds)")
    print("\n".join(g.line() for g in goals))
    if not a.no_write:
        for path in report.render():
            print(f"rewrote {path.relative_to(report.ROOT)}")
    if failed:
        print("\n== failed (their last recorded figures kept)\n" + "\n".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
