"""Bytes that are not the messages the host expects: refused as the client's fault
(INVALID_ARGUMENT, counted ``malformed``, one log line), never as a host bug (INTERNAL
or UNKNOWN with a DecodeError traceback); and numbers read at full width.

The messages here are raw bytes, written by hand: what any client can send,
whatever the generated classes would let it build.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from host.metrics import host_metrics
from host.server import HostServer
from pagehint.config import HostConfig
from pagehint.metrics import FnCollector
from tests.logs import log_lines
from virtqueue import codec
from virtqueue import features as F

MIB = 1 << 20
METHOD = "/pagehint.v1.Balloon/"


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, wire: int, payload: bytes) -> bytes:
    """One field: a varint (wire 0) is given encoded; length-delimited (2) gets its length."""
    tag = varint(number << 3 | wire)
    return tag + (varint(len(payload)) + payload if wire == 2 else payload)


def chain(cid: int, pfns: list[int], orders: list[int]) -> bytes:
    """GuestMessage{chain: Chain{id, pfn (packed fixed64), order (packed varints)}}."""
    body = field(1, 0, varint(cid))
    body += field(2, 2, b"".join(p.to_bytes(8, "little") for p in pfns))
    body += field(3, 2, b"".join(varint(o) for o in orders))
    return field(1, 2, body)


def touched(pfns: list[int], counts: list[int]) -> bytes:
    body = field(1, 2, b"".join(p.to_bytes(8, "little") for p in pfns))
    body += field(2, 2, b"".join(varint(c) for c in counts))
    return field(2, 2, body)


def negotiation(page_size: int = 4096, poison_val: int = 0, guest_id: str = "g1") -> bytes:
    return (
        field(1, 2, guest_id.encode())
        + field(2, 0, varint(64 * MIB))
        + field(3, 0, varint(page_size))
        + field(4, 0, varint(F.mask(F.REPORTING)))
        + field(5, 0, varint(poison_val))
        + field(6, 0, varint(32))
    )


@pytest.fixture
async def host() -> AsyncIterator[tuple[HostServer, grpc.aio.Channel, list[str]]]:
    lines = log_lines()
    server = HostServer(HostConfig(listen="127.0.0.1:0", drain_seconds=1.0))
    addr = await server.start()
    await server.serving()
    channel = grpc.aio.insecure_channel(addr)
    try:
        yield server, channel, lines
    finally:
        await channel.close()
        await server.stop()


def raw_unary(channel: grpc.aio.Channel, name: str) -> Any:
    return channel.unary_unary(METHOD + name)  # bytes in, bytes out


async def session_of(channel: grpc.aio.Channel, guest_id: str = "g1") -> str:
    reply = await raw_unary(channel, "Negotiate")(negotiation(guest_id=guest_id), timeout=5)
    return codec.decode_accepted(codec.NegotiateReply.FromString(reply)).session


async def one_stream(
    channel: grpc.aio.Channel, session: str, msgs: list[bytes]
) -> tuple[grpc.StatusCode, str, list[codec.UsedMsg]]:
    """Send ``msgs`` on a fresh stream, close it, read to the end: (status, details, answers)."""
    call: Any = channel.stream_stream(METHOD + "Reporting")(
        metadata=((codec.SESSION_KEY, session),), timeout=5
    )
    answers = []
    try:
        for m in msgs:
            await call.write(m)
        await call.done_writing()
        while (got := await call.read()) is not grpc.aio.EOF:
            answers.append(codec.decode_used(codec.Used.FromString(got)))
    except grpc.aio.AioRpcError:
        pass  # a write racing the host's status: the call's own status says what happened
    return await call.code(), (await call.details()) or "", answers


def scrape(server: HostServer) -> str:
    registry = CollectorRegistry()
    registry.register(FnCollector(lambda: host_metrics(server.device)))
    return generate_latest(registry).decode()


async def test_random_bytes_on_the_stream_are_invalid_argument_never_internal(
    host: tuple[HostServer, grpc.aio.Channel, list[str]],
) -> None:
    server, channel, lines = host
    session = await session_of(channel)
    rnd = random.Random(21)
    outcomes: dict[grpc.StatusCode, int] = {}
    for _ in range(300):
        code, details, _ = await one_stream(channel, session, [rnd.randbytes(rnd.randint(1, 64))])
        outcomes[code] = outcomes.get(code, 0) + 1
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OK), (code, details)
        assert "\n" not in details and "Error" not in details, details
    # Most random bytes do not decode at all (the rest decode to an empty message or
    # a chain, which the host answers as such).
    bad = outcomes.get(grpc.StatusCode.INVALID_ARGUMENT, 0)
    assert bad > 200, outcomes
    assert server.device.metrics.refusals["malformed"] >= bad
    assert "pagehint_host_malformed_messages_total " + str(
        float(server.device.metrics.refusals["malformed"])
    ) in scrape(server)
    text = "\n".join(lines)
    assert "internal error" not in text and "Traceback" not in text, text
    # One line in the host's log, however many (the rest are counted, rate-limited).
    assert sum("does not decode" in x or "empty message" in x for x in lines) == 1, lines
    # The session and the host are fine: a good chain on a new stream is done.
    code, _, answers = await one_stream(channel, session, [chain(5, [0], [9])])
    assert code == grpc.StatusCode.OK and answers[0].status == codec.DONE


async def test_a_good_chain_then_garbage_ends_the_stream_after_its_answer(
    host: tuple[HostServer, grpc.aio.Channel, list[str]],
) -> None:
    _, channel, _ = host
    session = await session_of(channel)
    code, details, answers = await one_stream(
        channel, session, [chain(1, [0], [9]), b"\xff\xff\xff"]
    )
    assert [a.id for a in answers] == [1] and answers[0].status == codec.DONE
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "a message that does not decode as pagehint.v1.GuestMessage"


@pytest.mark.parametrize("rpc", ["Negotiate", "Stats", "Close"])
async def test_unary_garbage_is_invalid_argument(
    host: tuple[HostServer, grpc.aio.Channel, list[str]], rpc: str
) -> None:
    server, channel, lines = host
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await raw_unary(channel, rpc)(b"\xff\xff\xff", timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
    assert (e.value.details() or "").startswith("the request does not decode as pagehint.v1.")
    assert "DecodeError" not in (e.value.details() or "")
    assert server.device.metrics.refusals["malformed"] == 1
    assert len([x for x in lines if "does not decode" in x]) == 1, lines


async def test_orders_and_counts_are_read_at_full_width(
    host: tuple[HostServer, grpc.aio.Channel, list[str]],
) -> None:
    server, channel, _ = host
    session = await session_of(channel)
    # Order 2**32 was read as order 0 (a uint32 field keeps the low 32 bits) and
    # discarded; 2**32 + 9 as order 9.
    for order in (2**32, 2**32 + 9, 2**64 - 1):
        code, _, answers = await one_stream(channel, session, [chain(1, [0], [order])])
        assert code == grpc.StatusCode.OK
        assert (answers[0].status, answers[0].reason) == (codec.REFUSED, "bad_order"), answers
        assert str(order) in answers[0].detail
    assert server.device.metrics.refusals["bad_order"] == 3
    # A touched run of 2**32 + 1 frames was read as 1 frame, and applied.
    code, _, answers = await one_stream(channel, session, [touched([0], [2**32 + 1])])
    assert code == grpc.StatusCode.OK and not answers
    assert server.device.metrics.refusals["touched_out_of_range"] == 1
    s = server.device.table.sessions[session]
    assert s.totals.touched_pages == 0 and s.totals.chains == 0


@pytest.mark.parametrize(
    ("page_size", "poison_val", "needle"),
    [(2**32 + 4096, 0, "page size 4294971392"), (4096, 2**32, "poison value 4294967296")],
)
async def test_negotiation_numbers_are_read_at_full_width(
    host: tuple[HostServer, grpc.aio.Channel, list[str]],
    page_size: int,
    poison_val: int,
    needle: str,
) -> None:
    _, channel, _ = host
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await raw_unary(channel, "Negotiate")(negotiation(page_size, poison_val), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (e.value.details() or ""), e.value.details()


async def test_a_slow_host_refuses_garbage_the_same_way() -> None:
    cfg = HostConfig(listen="127.0.0.1:0", drain_seconds=1.0, latency=0.01)
    server = HostServer(cfg)
    addr = await server.start()
    await server.serving()
    try:
        async with grpc.aio.insecure_channel(addr) as channel:
            session = await session_of(channel)
            code, _, answers = await one_stream(
                channel, session, [chain(1, [0], [9]), b"\xff\xff\xff"]
            )
        assert [a.status for a in answers] == [codec.DONE]
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert server.device.metrics.refusals["malformed"] == 1
        assert server.service.queue.inflight == 0
    finally:
        await server.stop()
