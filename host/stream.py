"""One Reporting stream's life on the host, whatever carries it (gRPC, the local
queue socket, the in-process loopback): the session its token names, the
session's bookkeeping while it is open, the queue's answers, and how it ends.
Each transport only frames the messages and says the end its own way."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from host.queue import ReportingQueue
from host.sessions import SessionError, SessionKilled
from virtqueue import codec


class StreamEnd(Exception):
    """The stream ends with a status: its code and one plain line for the guest."""

    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(f"{code.name}: {detail}")
        self.code = code
        self.detail = detail


def session_status(e: SessionError) -> grpc.StatusCode:
    """ABORTED for a session the OOM killer ended (the guest stops, exit 3), else
    UNAUTHENTICATED (the guest negotiates again)."""
    return (
        grpc.StatusCode.ABORTED if isinstance(e, SessionKilled) else grpc.StatusCode.UNAUTHENTICATED
    )


async def reporting(
    queue: ReportingQueue,
    token: str,
    requests: AsyncIterator[codec.GuestMessage | codec.Malformed],
    where: str = "",
    gone: Callable[[], bool] = lambda: False,
    pause: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[codec.Used]:
    """The answers to a stream of ``token``'s session, in order. Ends quietly when
    the guest ends its side; raises StreamEnd when the host ends it with a status
    (no such session, a message that does not decode, the session ended — fenced,
    expired, replaced, OOM-killed — or a host bug, whose story goes to the log).
    ``where`` names the peer in the log; ``gone()`` says the peer has left (a
    cancellation then is the transport's, not the session's end); ``pause()``,
    awaited after each answer, is where a transport waits for its peer to read
    (in here, so that a session's end that cancels the wait ends the stream with
    its status as anywhere else)."""
    device = queue.device
    try:
        session = device.table.session(token)
    except SessionError as e:
        device.refuse("unknown_session")
        raise StreamEnd(session_status(e), str(e)) from None
    task = asyncio.current_task()
    session.stream_opened(task)
    try:
        answers = (
            queue.with_notices(session, requests)
            if session.host_memory or session.balloon is not None
            else queue.answers(session, requests)
        )
        async for used in answers:
            yield used
            if pause is not None:
                await pause()
    except asyncio.CancelledError:
        # Ending the session (fenced, expired, replaced) cancels this task: tell the
        # guest below, and it reconnects (gRPC sends no status for a cancelled
        # handler, so the guest would wait on a silent stream).
        if not session.ended or gone():
            raise
    except codec.Undecodable as e:
        # The framing held but a message did not decode: end the stream. Its chains
        # in flight are the guest's to fence.
        device.refuse(
            "malformed", f"Reporting (guest {session.guest_id}) from {where or 'a client'}: {e}"
        )
        raise StreamEnd(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
    except Exception:
        device.problems.note("internal", "internal error:\n" + traceback.format_exc())
        raise StreamEnd(grpc.StatusCode.INTERNAL, "internal error in the host") from None
    finally:
        session.stream_closed(task)
    if session.killed:
        # The host's OOM killer ended it: the guest ends too (it does not reconnect).
        raise StreamEnd(grpc.StatusCode.ABORTED, session.killed)
    if session.ended:
        raise StreamEnd(grpc.StatusCode.UNAUTHENTICATED, "session ended; negotiate again")
