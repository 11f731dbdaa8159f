"""A raw gRPC client sends every kind of bad chain; the host refuses each and keeps serving."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from tests.integration.procs import Procs
from virtqueue import codec
from virtqueue import features as F
from virtqueue.v1 import balloon_pb2 as pb

RAM = 64 << 20  # 16384 pages


async def negotiate(stub: Any, guest_id: str) -> str:
    reply = await stub.Negotiate(
        codec.encode_negotiate(codec.Negotiation(guest_id, RAM, 4096, F.mask(F.REPORTING), 0)),
        timeout=5,
    )
    return str(codec.decode_accepted(reply).session)


async def send_one(stub: Any, session: str, msg: Any) -> tuple[grpc.StatusCode, str]:
    """Send one message on a fresh stream; its status if the stream ended, else OK."""
    call = stub.Reporting(metadata=((codec.SESSION_KEY, session),))
    try:
        await call.write(msg)
        used = await call.read()
        await call.done_writing()
        if used is grpc.aio.EOF:
            return (await call.code()), (await call.details()) or ""
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as e:
        # A write racing the server's early abort can fail with a transport-level
        # error; the call's own final status is what the host said.
        code = await call.code()
        if code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED):
            return code, (await call.details()) or ""
        return e.code(), e.details() or ""
    finally:
        call.cancel()


async def send_then_good(stub: Any, session: str, msg: Any) -> list[codec.UsedMsg]:
    """Send a bad message, then a good chain (id 99) on the same stream; the answers.

    The stream must survive the bad message: the good chain is always answered.
    """
    call = stub.Reporting(metadata=((codec.SESSION_KEY, session),))
    try:
        await call.write(msg)
        await call.write(chain([2048], [9], cid=99))
        answers: list[codec.UsedMsg] = []
        while not answers or answers[-1].id != 99:
            got = await call.read()
            assert got is not grpc.aio.EOF, "the stream ended after a bad message"
            answers.append(codec.decode_used(got))
        return answers
    finally:
        call.cancel()


def chain(pfns: list[int], orders: list[int], cid: int = 1) -> Any:
    return pb.GuestMessage(chain=pb.Chain(id=cid, pfn=pfns, order=orders))


NOT_PROBED = ("evil-but-good", "evil-oversized")
REFUSED = "refused"  # answered REFUSED, the stream goes on
SILENT = "silent"  # no chain id to answer: counted, the stream goes on
BAD = [
    ("out_of_range", chain([16384], [0]), REFUSED, "outside guest RAM"),
    ("out_of_range_end", chain([16384], [10]), REFUSED, "outside"),
    ("huge_pfn", chain([2**63], [0]), REFUSED, "outside"),
    ("misaligned", chain([513], [9]), REFUSED, "not aligned"),
    ("bad_order", chain([0], [11]), REFUSED, "order 11"),
    ("duplicate", chain([512, 512], [9, 9]), REFUSED, "duplicate"),
    ("overlap", chain([0, 512], [10, 9]), REFUSED, "overlap"),
    ("too_many", chain(list(range(513)), [0] * 513), REFUSED, "capacity"),  # > max-chain-ranges
    ("mismatched", chain([0, 512], [9]), REFUSED, "arrays must match"),
    ("empty_chain", chain([], []), REFUSED, "at least one"),
    ("empty_message", pb.GuestMessage(), SILENT, ""),
    ("touched_outside", pb.GuestMessage(touched=pb.Touched(pfn=[16000], count=[1000])), SILENT, ""),
]


@pytest.mark.asyncio
async def test_bad_chains_refused_host_survives_neighbour_unaffected(procs: Procs) -> None:
    addr, host = procs.host()
    good = procs.guest(
        "--host",
        addr,
        "--ram",
        "512MiB",
        "--workload",
        "memhog",
        "--duration",
        "8",
        "--threshold",
        "4",
        "--check",
    )
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = codec.stub(ch)
        # Unknown session, and a made-up one: a guest can only name its own.
        # (Read first: a write racing the host's immediate abort can surface as gRPC's
        # own INTERNAL error instead of the host's status.)
        for token in ("", "0" * 32):
            call = stub.Reporting(metadata=((codec.SESSION_KEY, token),))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call.read()
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value
        for name, msg, kind, needle in BAD:
            session = await negotiate(stub, f"evil-{name}")
            answers = await send_then_good(stub, session, msg)
            assert answers[-1].status == codec.DONE, (name, answers)
            if kind == REFUSED:
                first = answers[0]
                assert (first.id, first.status) == (1, codec.REFUSED), (name, answers)
                assert needle in first.detail, (name, first)
            else:
                assert len(answers) == 1, (name, answers)
        # A message far over the size limit is refused by gRPC itself.
        session = await negotiate(stub, "evil-oversized")
        code, _ = await send_one(stub, session, chain(list(range(20000)), [0] * 20000))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        # A well-formed chain from the same client still works after all that.
        session = await negotiate(stub, "evil-but-good")
        code, details = await send_one(stub, session, chain([0, 1024], [10, 9]))
        assert code == grpc.StatusCode.OK, details
        # Bad negotiations are refused too.
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Negotiate(
                codec.encode_negotiate(
                    codec.Negotiation("x", RAM + 4096, 4096, F.mask(F.REPORTING), 0)
                ),
                timeout=5,
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Negotiate(
                codec.encode_negotiate(codec.Negotiation("x", RAM, 4096, 0, 0)), timeout=5
            )
        stats = codec.decode_host_stats(await stub.Stats(codec.encode_stats_request(), timeout=5))
        for reason in (
            "out_of_range",
            "misaligned",
            "bad_order",
            "duplicate",
            "overlap",
            "too_many_ranges",
            "malformed",
            "unknown_session",
            "empty",
            "touched_out_of_range",
        ):
            assert stats.refusals.get(reason, 0) >= 1, (reason, stats.refusals)
        # Only the good chain (one order-9 range) was booked for each evil guest: nothing
        # of a refused chain was discarded or counted as reported.
        for g in stats.guests:
            if g.guest_id.startswith("evil-") and g.guest_id not in (
                "evil-but-good",
                "evil-oversized",
            ):
                assert g.reported_bytes == 512 * 4096 and g.chains == 1, g
    assert host.poll() is None, "host died"
    s = procs.finish(good)
    assert s["report_failures"] == 0
    assert s["reported_bytes"] > 0
    assert s["host_reported_bytes"] == s["reported_bytes"]
    assert s["invariants"] == "ok"
