"""Run every benchmark in bench/ and print its results (``make bench``)."""

from __future__ import annotations

import importlib
import json
import pkgutil

import bench


def main() -> None:
    verdicts: list[str] = []
    for mod in sorted(m.name for m in pkgutil.iter_modules(bench.__path__)):
        if not mod.startswith("bench_"):
            continue
        module = importlib.import_module(f"bench.{mod}")
        print(f"== {mod}")
        result = module.main()
        print(json.dumps(result, indent=2), flush=True)
        if hasattr(module, "verdicts"):
            verdicts.extend(module.verdicts(result))
    # Each ratio next to its goal, at the end where it is read.
    print("\n== goals (ratios measured in this run)")
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
