"""The reporting virtqueue's processing: each guest message of a Reporting stream
handed to the device in turn (a chain: checked, discarded, answered; a touch
batch: applied, and with the host's memory model answered with a Notice), and
the answers written back in order. A guest that follows the host's memory model
also hears, on the same stream, of evictions other guests caused
(``with_notices``). ``--latency`` holds each chain first (a slow host); the
drain at SIGTERM waits for those (``idle``). ``--chain-log`` writes a line per
chain answered."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import IO

from host.balloon import handle_pages, take_stats
from host.device import BalloonDevice
from host.hints import handle_hint
from host.migration import take_snapshot_answer
from host.sessions import Session
from virtqueue import codec

log = logging.getLogger(__name__)


class ReportingQueue:
    def __init__(self, device: BalloonDevice, latency: float = 0.0) -> None:
        self.device = device
        self.latency = latency
        # --chain-log: the host's own per-chain record, for checking guests' timelines.
        self.chain_log: IO[str] | None = None
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def answers(
        self,
        session: Session,
        request_iterator: AsyncIterator[codec.GuestMessage | codec.Malformed],
    ) -> AsyncIterator[codec.Used]:
        """The guest's messages answered in turn (a guest without the host's memory
        model: the host speaks only when spoken to)."""
        if self.latency:
            async for msg in request_iterator:
                if session.ended:
                    break
                used = await self._delayed_message(session, msg)
                if used is not None:
                    yield used
            return
        # The hot path: one message handled start to finish without yielding to the
        # loop (no task or future per chain).
        one = self._one_message
        async for msg in request_iterator:
            if session.ended:
                break
            used = one(session, msg)
            if used is not None:
                yield used

    async def with_notices(
        self,
        session: Session,
        request_iterator: AsyncIterator[codec.GuestMessage | codec.Malformed],
    ) -> AsyncIterator[codec.Used]:
        """A stream of a guest that follows the host's memory model: the host also
        speaks unasked (a Notice of evictions other guests' touches caused), so the
        guest's messages are read by a task of their own and both kinds of answer
        are written from here, in order. The reader waits while its answers are
        unwritten (at most a queue's worth: a guest that does not read is not
        buffered without end)."""
        answers: asyncio.Queue[codec.Used | BaseException | None] = asyncio.Queue(
            maxsize=max(1, session.queue_size)
        )
        wake = asyncio.Event()
        session.wakes.add(wake)
        reader = asyncio.create_task(self._read_into(session, request_iterator, answers, wake))
        try:
            while True:
                # Answers first: a queued answer may carry an eviction id older than
                # the one taken below, and the guest must hear them in order (its
                # acknowledgement of an id covers every earlier one).
                while not answers.empty():
                    item = answers.get_nowait()
                    if item is None:
                        return
                    if isinstance(item, BaseException):
                        raise item
                    yield item
                evicted, evict_id = session.ram.take_evicted()
                if evicted:
                    yield codec.encode_notice(codec.NoticeMsg(evicted, 0, 0, 0, 0, evict_id))
                b = session.balloon
                if b is not None and (
                    b.told_pages != b.target_pages or b.told_config != b.config()
                ):
                    # Something in the config space changed (or the target was never
                    # told): virtio's config change, the whole config space.
                    b.told_pages, b.told_config = b.target_pages, b.config()
                    yield codec.encode_config(codec.ConfigMsg(*b.told_config))
                if session.ended:
                    return
                await wake.wait()
                wake.clear()
        finally:
            session.wakes.discard(wake)
            reader.cancel()
            # Gone before the stream is handed back: its transport may read on (the
            # queue socket's lingering close), and two readers of one stream raise.
            await asyncio.wait({reader})

    async def _read_into(
        self,
        session: Session,
        request_iterator: AsyncIterator[codec.GuestMessage | codec.Malformed],
        answers: asyncio.Queue[codec.Used | BaseException | None],
        wake: asyncio.Event,
    ) -> None:
        """The guest's messages, answered into ``answers``; None when the guest is
        done, the exception when a message does not decode (the stream ends)."""
        end: codec.Used | BaseException | None = None
        try:
            async for msg in request_iterator:
                if session.ended:
                    break
                if self.latency:
                    used = await self._delayed_message(session, msg)
                else:
                    used = self._one_message(session, msg)
                if used is not None:
                    await answers.put(used)
                    wake.set()
        except codec.Undecodable as e:
            end = e
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the writer raises it: one path for every failure
            end = e
        await answers.put(end)
        wake.set()

    def _one_message(
        self, session: Session, msg: codec.GuestMessage | codec.Malformed
    ) -> codec.Used | None:
        """Handle one guest message; the encoded answer, or None (nothing to answer).
        codec.Undecodable for a message that did not decode."""
        decoded = codec.decode_guest_message(msg)
        if decoded is None:
            # No chain id to answer: count it and go on (the stream survives).
            self.device.refuse("malformed", f"guest {session.guest_id}: empty message")
            return None
        if isinstance(decoded, codec.ChainMsg):  # the hot path first
            if decoded.touched is not None:
                self._touched_in_chain(session, decoded.touched)
            used = self.device.handle_report(session, decoded.id, decoded.pfns, decoded.orders)
            if used is None:
                # A fence ended the session while this chain waited: it was cancelled
                # before any discard, and its guest has moved on.
                return None
            session.last_seen = time.monotonic()
            if self.chain_log is not None:
                self._log_chain(session.guest_id, used)
            return codec.encode_used(used)
        if isinstance(decoded, codec.TouchedMsg):
            notice = self.device.answer_touched(
                session, decoded.pfns, decoded.counts, decoded.seq, decoded.evict_ack
            )
            session.last_seen = time.monotonic()
            return None if notice is None else codec.encode_notice(notice)
        if isinstance(decoded, codec.PagesMsg):
            return codec.encode_used(handle_pages(session, decoded))
        if isinstance(decoded, codec.HintMsg):
            problem = handle_hint(session, decoded)
            if problem:
                self.device.refuse(problem, f"guest {session.guest_id}: free page hint refused")
            session.last_seen = time.monotonic()
            return None
        if isinstance(decoded, codec.DirtyMsg | codec.ImageCheckedMsg):
            problem = take_snapshot_answer(session, decoded)
            if problem:
                self.device.refuse(problem, f"guest {session.guest_id}: snapshot answer refused")
            session.last_seen = time.monotonic()
            return None
        problem = take_stats(session, decoded)
        if problem:
            self.device.refuse(problem, f"guest {session.guest_id}: stats refused")
        return None

    def _touched_in_chain(self, session: Session, t: codec.TouchedMsg) -> None:
        """A chain's own touches (Chain.touched), applied before its ranges are
        checked, as a Touched message just before it would be. Refused (counted,
        nothing applied; the chain is handled still) from a guest that did not
        negotiate them, or numbered: a numbered batch is the host's memory model's,
        and gets a Notice of its own, which a chain's answer cannot carry. Nothing
        is applied for a session that ended while the chain waited (--latency): its
        chain is not handled either."""
        if session.ended:
            return
        if not session.touches_in_chain:
            problem, why = "touched_in_chain_unnegotiated", "not negotiated"
        elif session.host_memory or t.seq or t.evict_ack:
            problem, why = "touched_in_chain_numbered", "they belong to the host memory model"
        else:
            self.device.answer_touched(session, t.pfns, t.counts)
            return
        self.device.refuse(problem, f"guest {session.guest_id}: touches in a chain refused: {why}")

    async def _delayed_message(
        self, session: Session, msg: codec.GuestMessage | codec.Malformed
    ) -> codec.Used | None:
        """--latency: a slow host. The chain is held for the delay first (the drain
        on SIGTERM waits for such chains: ``inflight``/``idle``)."""
        if isinstance(codec.decode_guest_message(msg), codec.ChainMsg):
            self.inflight += 1
            self.idle.clear()
            try:
                await asyncio.sleep(self.latency)
            finally:
                self.inflight -= 1
                if self.inflight == 0:
                    self.idle.set()
        return self._one_message(session, msg)

    def _log_chain(self, guest_id: str, used: codec.UsedMsg) -> None:
        assert self.chain_log is not None
        record = {
            "wall": round(time.time(), 4),
            "guest": guest_id,
            "chain": used.id,
            "status": codec.STATUS_NAMES.get(used.status, str(used.status)),
            "resident_bytes": used.resident_bytes,
        }
        try:
            self.chain_log.write(json.dumps(record) + "\n")
        except OSError as e:
            # A record, not the service: keep serving, say so once, stop writing.
            log.info(f"--chain-log: cannot write ({e.strerror}); no more chain lines")
            self.chain_log = None
