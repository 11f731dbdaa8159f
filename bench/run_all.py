"""Run every benchmark in bench/ and print its results (``make bench``)."""

from __future__ import annotations

import importlib
import json
import pkgutil

import bench


def main() -> None:
    for mod in sorted(m.name for m in pkgutil.iter_modules(bench.__path__)):
        if not mod.startswith("bench_"):
            continue
        module = importlib.import_module(f"bench.{mod}")
        print(f"== {mod}")
        print(json.dumps(module.main(), indent=2), flush=True)


if __name__ == "__main__":
    main()
