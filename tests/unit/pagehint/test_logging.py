"""Log lines go through the logging module: records with fields, levels, one format."""

from __future__ import annotations

import logging
import re

import pytest

from pagehint.logging import debug_of, make_logger


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


def test_verbose_adds_debug_lines_and_only_then(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pagehint")
    plain, verbose = make_logger("host"), make_logger("host", verbose=True)
    plain.debug("chain 1 plain")
    verbose.debug("chain 1 verbose")
    got = [
        (r.getMessage(), r.levelno) for r in caplog.records if r.getMessage().startswith("chain")
    ]
    assert got == [("chain 1 verbose", logging.DEBUG)]
    # Hot paths ask once: a debug function only where -v asked for one.
    assert debug_of(plain) is None and debug_of(lambda _m: None) is None
    assert debug_of(verbose) is not None


def test_quiet_and_verbose_do_not_go_together() -> None:
    from pagehint.cli import main

    assert main(["guest", "--duration", "1", "--quiet", "-v"], env={}) == 2
