"""Log lines go through the logging module: records with fields, levels, one format."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from pagehint.logging import log_as, setup


def test_records_carry_source_and_fields(caplog: pytest.LogCaptureFixture) -> None:
    setup()
    log_as("guest[g1]", guest="g1")
    logging.getLogger("guest.balloon.driver").info("connected")
    (rec,) = [r for r in caplog.records if r.getMessage() == "connected"]
    assert rec.name == "guest.balloon.driver" and rec.levelno == logging.INFO
    assert rec.source == "guest[g1]" and rec.guest == "g1"  # type: ignore[attr-defined]


async def test_each_task_keeps_its_own_source(caplog: pytest.LogCaptureFixture) -> None:
    # The guests of a group run in one process: each task's lines are its own.
    setup()
    log = logging.getLogger("guest.service")

    async def guest(name: str) -> None:
        log_as(f"guest[{name}]", guest=name)
        await asyncio.sleep(0)
        log.info(f"hello from {name}")

    await asyncio.gather(guest("a"), guest("b"))
    got = {r.getMessage(): r.source for r in caplog.records}  # type: ignore[attr-defined]
    assert got["hello from a"] == "guest[a]" and got["hello from b"] == "guest[b]"


def test_without_a_source_the_package_is_the_source(caplog: pytest.LogCaptureFixture) -> None:
    setup()
    logging.getLogger("host.sessions").info("ended")
    (rec,) = [r for r in caplog.records if r.getMessage() == "ended"]
    assert rec.source == "host"  # type: ignore[attr-defined]


def test_quiet_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    setup(quiet=True)
    logging.getLogger("host.server").info("listening")
    assert not [r for r in caplog.records if r.getMessage() == "listening"]


def test_the_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    setup()
    log_as("sweep")
    logging.getLogger("lab.sweep").info("host on 127.0.0.1:1")
    err = capsys.readouterr().err
    assert re.fullmatch(r"\d\d:\d\d:\d\d sweep: host on 127\.0\.0\.1:1\n", err), err


def test_verbose_adds_debug_lines_and_only_then(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("host.device")
    setup()
    log.debug("chain 1 plain")
    assert not log.isEnabledFor(logging.DEBUG)  # hot paths ask once per chain
    setup(verbose=True)
    log.debug("chain 1 verbose")
    got = [
        (r.getMessage(), r.levelno) for r in caplog.records if r.getMessage().startswith("chain")
    ]
    assert got == [("chain 1 verbose", logging.DEBUG)]


def test_quiet_and_verbose_do_not_go_together() -> None:
    from pagehint.cli import main

    assert main(["guest", "--duration", "1", "--quiet", "-v"], env={}) == 2
