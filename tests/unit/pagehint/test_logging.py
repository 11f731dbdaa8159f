"""Log lines go through the logging module: records with fields, levels, one format."""

from __future__ import annotations

import logging
import re

import pytest

from pagehint.logging import make_logger


def test_records_carry_source_and_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pagehint")
    make_logger("guest[g1]", guest="g1")("connected")
    (rec,) = [r for r in caplog.records if r.getMessage() == "connected"]
    assert rec.name == "pagehint.guest" and rec.levelno == logging.INFO
    assert rec.source == "guest[g1]" and rec.guest == "g1"  # type: ignore[attr-defined]


def test_quiet_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pagehint")
    make_logger("host", quiet=True)("listening")
    assert not [r for r in caplog.records if r.getMessage() == "listening"]


def test_the_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    make_logger("sweep")("host on 127.0.0.1:1")
    err = capsys.readouterr().err
    assert re.fullmatch(r"\d\d:\d\d:\d\d sweep: host on 127\.0\.0\.1:1\n", err), err
