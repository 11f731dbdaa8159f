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
        codec.encode_negotiate(codec.Negotiation(guest_id, RAM, 4096, F.mask(F.REPORTING), 0, 32)),
        timeout=5,
    )
    return str(codec.decode_accepted(reply).session)


async def send_one(stub: Any, session: str, msg: Any) -> tuple[grpc.StatusCode, str]:
    call = stub.Reporting(metadata=((codec.SESSION_KEY, session),))
    try:
        await call.write(msg)
        used = await call.read()
        await call.done_writing()
        if used is grpc.aio.EOF:
            return (await call.code()), (await call.details()) or ""
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details() or ""
    finally:
        call.cancel()


def chain(pfns: list[int], orders: list[int], cid: int = 1) -> Any:
    return pb.GuestMessage(chain=pb.Chain(id=cid, pfn=pfns, order=orders))


BAD = [
    ("out_of_range", chain([16384], [0]), grpc.StatusCode.INVALID_ARGUMENT, "outside guest RAM"),
    ("out_of_range_end", chain([16384], [10]), grpc.StatusCode.INVALID_ARGUMENT, "outside"),
    ("huge_pfn", chain([2**63], [0]), grpc.StatusCode.INVALID_ARGUMENT, "outside"),
    ("misaligned", chain([513], [9]), grpc.StatusCode.INVALID_ARGUMENT, "not aligned"),
    ("bad_order", chain([0], [11]), grpc.StatusCode.INVALID_ARGUMENT, "order 11"),
    ("duplicate", chain([512, 512], [9, 9]), grpc.StatusCode.INVALID_ARGUMENT, "duplicate"),
    ("overlap", chain([0, 512], [10, 9]), grpc.StatusCode.INVALID_ARGUMENT, "overlap"),
    (
        "too_many",
        chain(list(range(0, 33 * 512, 512)), [9] * 33),
        grpc.StatusCode.INVALID_ARGUMENT,
        "capacity",
    ),
    ("mismatched", chain([0, 512], [9]), grpc.StatusCode.INVALID_ARGUMENT, "arrays must match"),
    ("empty_chain", chain([], []), grpc.StatusCode.INVALID_ARGUMENT, "at least one"),
    ("empty_message", pb.GuestMessage(), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    ("oversized", chain(list(range(20000)), [0] * 20000), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    (
        "touched_outside",
        pb.GuestMessage(touched=pb.Touched(pfn=[16000], count=[1000])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "outside",
    ),
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
        for token in ("", "0" * 32):
            code, details = await send_one(stub, token, chain([0], [9]))
            assert code == grpc.StatusCode.UNAUTHENTICATED, details
        for name, msg, want, needle in BAD:
            session = await negotiate(stub, f"evil-{name}")
            code, details = await send_one(stub, session, msg)
            assert code == want, (name, code, details)
            assert needle in details, (name, details)
        # A well-formed chain from the same client still works after all that.
        session = await negotiate(stub, "evil-but-good")
        code, details = await send_one(stub, session, chain([0, 1024], [10, 9]))
        assert code == grpc.StatusCode.OK, details
        # Bad negotiations are refused too.
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Negotiate(
                codec.encode_negotiate(
                    codec.Negotiation("x", RAM + 4096, 4096, F.mask(F.REPORTING), 0, 32)
                ),
                timeout=5,
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Negotiate(
                codec.encode_negotiate(codec.Negotiation("x", RAM, 4096, 0, 0, 32)), timeout=5
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
        ):
            assert stats.refusals.get(reason, 0) >= 1, (reason, stats.refusals)
        # Nothing was discarded for a refused chain: the evil guests' ledgers show no reports.
        for g in stats.guests:
            if g.guest_id.startswith("evil-") and g.guest_id != "evil-but-good":
                assert g.reported_bytes == 0 and g.chains == 0, g
    assert host.poll() is None, "host died"
    s = procs.finish(good)
    assert s["report_failures"] == 0
    assert s["reported_bytes"] > 0
    assert s["host_reported_bytes"] == s["reported_bytes"]
    assert s["invariants"] == "ok"
