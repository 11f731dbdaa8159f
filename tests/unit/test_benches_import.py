"""Every benchmark imports: a module moved in the house (a room rebuilt) breaks
`make bench` silently otherwise, since no test runs the benches."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import bench

MODULES = sorted(m.name for m in pkgutil.walk_packages(bench.__path__, "bench.") if not m.ispkg)


@pytest.mark.parametrize("name", MODULES)
def test_the_bench_imports(name: str) -> None:
    importlib.import_module(name)
