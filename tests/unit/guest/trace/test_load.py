"""A trace is parsed once per process, and its errors are one line naming it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from guest.trace import load
from guest.trace.load import load_plan
from pagehint.config import TraceConfig
from pagehint.errors import UsageError

LINE = "  a-1 [000] ..... 1.000000: mm_page_free: page=00000000deadbeef pfn=0x10 order=0\n"


def test_parsed_once_until_the_file_changes(tmp_path: Path) -> None:
    p = tmp_path / "t.trace"
    p.write_text(LINE)
    cfg = TraceConfig(path=str(p))
    first = load_plan(cfg)
    assert load_plan(cfg) is first
    p.write_text(LINE * 2)
    os.utime(p, ns=(0, 1))  # a new mtime even within the clock's resolution
    second = load_plan(cfg)
    assert second is not first and len(second.trace) == 2
    assert load._load.cache_info().maxsize == 8


def test_errors_are_usage_errors_naming_the_flag(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^--trace .*: No such file"):
        load_plan(TraceConfig(path=str(tmp_path / "none")))
    bad = tmp_path / "bad.trace"
    bad.write_text("garbage\n")
    with pytest.raises(UsageError, match=r"^--trace .*bad\.trace:1: not an ftrace event line"):
        load_plan(TraceConfig(path=str(bad)))
