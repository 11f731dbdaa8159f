"""The guest's view of its host: what the host last said it holds for this guest
(from each DONE chain's answer, and a Stats poll between them), which host process
answers (its instance: a restarted host counts from zero), the chains out for too
long (the stall watch), and the ``--reports`` log of every chain. Read by the
runtime, the summary and the metrics; the reporting device (driver.py) only
tells it what each chain came to."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import IO

from guest.balloon.connection import Connection, oom_killed
from guest.balloon.transport import TransportError
from guest.balloon.window import ChainWindow, Outstanding
from guest.mm.constants import PAGE_SIZE
from pagehint.config import GuestConfig
from pagehint.schema import ReportRecord, encode
from virtqueue import codec
from virtqueue.codec import Accepted, GuestFigures, UsedMsg

log = logging.getLogger(__name__)

# Seconds between host-stats polls. host_resident_bytes between acknowledgements
# (touches raise it) matters to a timeline and to metrics; without either, a
# slow poll keeps hundreds of guests from costing the host a thousand calls a second.
STATS_PERIOD = 0.25
STATS_PERIOD_QUIET = 2.0
WATCH_PERIOD = 0.5  # seconds between looks at the oldest outstanding chain


class HostView:
    def __init__(self, conn: Connection, window: ChainWindow, cfg: GuestConfig) -> None:
        self.conn = conn
        self.window = window
        self.cfg = cfg
        self.host_figures: GuestFigures | None = None
        self.host_resident_bytes: int | None = None
        self.host_instance = ""
        # Pages the current host process acknowledged (DONE): what its totals can match.
        self.acked_pages_this_host = 0
        self.stalls = 0
        # The last chain the host answered DONE (whose answer host_resident_bytes
        # holds), and an optional log of every chain (--reports): times are
        # seconds since ``epoch`` (the run's start).
        self.last_done: int | None = None
        self.last_done_resident: int | None = None
        self.report_log: IO[str] | None = None
        self.epoch = time.monotonic()

    def chain_answered(self, chain: Outstanding, used: UsedMsg) -> None:
        """Any answer (DONE or not, or a fence's): the --reports line."""
        if self.report_log is not None:
            self._log_report(chain, used)

    def chain_done(self, chain: Outstanding, used: UsedMsg) -> None:
        """A chain the host discarded (DONE). A fence that says DONE comes from the
        same host process (a restarted one has no record), which counted the chain:
        so does this."""
        self.acked_pages_this_host += chain.pages
        if used.reason != "fenced_done":
            # The host's figure right after this chain's discard: fresher than a poll.
            self.host_resident_bytes = used.resident_bytes
            self.last_done = chain.id
            self.last_done_resident = used.resident_bytes

    def new_session(self, acc: Accepted) -> None:
        if acc.instance != self.host_instance:
            self.host_instance = acc.instance
            self.acked_pages_this_host = 0

    def _log_report(self, chain: Outstanding, used: UsedMsg) -> None:
        assert self.report_log is not None
        fenced = used.reason in ("fenced_done", "cancelled")
        record: ReportRecord = {
            "chain": chain.id,
            "t_sent": round(chain.sent_at - self.epoch, 4),
            "t_answered": round(time.monotonic() - self.epoch, 4),
            "ranges": [[p, o] for p, o in chain.batch],
            "bytes": chain.pages * PAGE_SIZE,
            "status": codec.STATUS_NAMES.get(used.status, str(used.status)),
            "reason": used.reason,
            # Right after this chain's discard, as the host counted it (None when a
            # fence, not the host's answer, settled the chain).
            "host_resident_bytes": None if fenced else used.resident_bytes,
        }
        try:
            self.report_log.write(encode(record) + "\n")
        except OSError as e:
            # The log is a by-product: losing it must not lose the report (its
            # blocks still have to go back). Say so once and stop writing it.
            log.info(f"--reports: cannot write ({e.strerror}); no more report lines")
            self.report_log = None

    async def poll_stats(self) -> None:
        await self.refresh_stats()
        # The first wait is a random part of the period: guests that booted in the
        # same instant (a group, a load test) do not all poll in the same one, on
        # top of their reporting passes, whose 2 s delays end together.
        await asyncio.sleep(self.stats_period() * random.random())
        while True:
            await self.refresh_stats()
            await asyncio.sleep(self.stats_period())

    def stats_period(self) -> float:
        """Seconds to the next poll: fast while a timeline or metrics watch, slow
        otherwise, and always well inside the host's session timeout (the poll is
        what keeps an idle guest's session alive)."""
        watched = self.cfg.timeline is not None or self.cfg.metrics_port is not None
        period = STATS_PERIOD if watched else STATS_PERIOD_QUIET
        acc = self.conn.accepted
        if acc is not None and acc.session_timeout_ms:
            period = min(period, acc.session_timeout_ms / 1000 / 4)
        return max(0.05, period)

    async def refresh_stats(self, timeout: float = 2.0) -> None:
        session = self.conn.session
        if not session or not self.conn.connected.is_set():
            return
        try:
            figures = await self.conn.transport.stats(session, timeout=timeout)
        except TransportError as e:
            stream = self.conn.stream
            if oom_killed(str(e)) and session == self.conn.session:
                # The host's OOM killer ended the session while this poll was out
                # (its stream's ABORTED may come later): stop, as the stream would.
                if not self.conn.closing:
                    self.conn.killed(str(e))
                return
            if "UNAUTHENTICATED" in str(e) and stream is not None and session == self.conn.session:
                # The host ended our session (expired while we were paused, say):
                # the stream is as good as gone; reconnect and fence.
                self.conn.lost(stream, f"the host ended the session ({e})")
            return
        if figures.self_guest is not None:
            self.host_figures = figures.self_guest
            self.host_resident_bytes = figures.self_guest.resident_bytes

    async def watch_stalls(self) -> None:
        """Say so when a report has been out longer than stall_warning (once per chain)."""
        while True:
            await asyncio.sleep(WATCH_PERIOD)
            self.conn.problems.flush()
            now = time.monotonic()
            for chain in list(self.window.chains.values()):
                age = now - chain.sent_at
                if not chain.warned and age >= self.cfg.stall_warning:
                    chain.warned = True
                    self.stalls += 1
                    log.info(
                        f"report {chain.id} unanswered for {age:.1f}s (host slow or stalled): "
                        f"its {chain.pages * PAGE_SIZE >> 20} MiB stay isolated until the host "
                        "answers or is fenced"
                    )
