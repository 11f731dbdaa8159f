"""Conversions between domain types and wire messages. Nothing else imports *_pb2."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, NamedTuple, Protocol, TypeVar, cast

import grpc
import grpc.aio
from google.protobuf.message import Message

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

from virtqueue.v1 import balloon_pb2 as pb
from virtqueue.v1 import balloon_pb2_grpc as pb_grpc

SESSION_KEY = "x-pagehint-session"
T = TypeVar("T", bound="DataclassInstance")

Range = tuple[int, int]  # (pfn, order)


@dataclass(frozen=True)
class Negotiation:
    guest_id: str
    ram_bytes: int
    page_size: int
    features: int
    poison_val: int
    capacity: int
    previous_session: str = ""


@dataclass(frozen=True)
class Fence:
    """What became of a previous session's chains: see NegotiateRequest.previous_session."""

    known: bool
    done_ids: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Accepted:
    features: int
    queue_size: int
    max_chain_ranges: int
    session: str
    backend: str
    shm_path: str
    discard: str
    min_order: int = 0
    fence: Fence | None = None
    instance: str = ""
    session_timeout_ms: int = 0


# How the host finished a chain (the wire's UsedStatus).
DONE = 0
REFUSED = 1
DISCARD_FAILED = 2
STATUS_NAMES = {DONE: "done", REFUSED: "refused", DISCARD_FAILED: "discard_failed"}


class UsedMsg(NamedTuple):
    """The host's answer to one chain (a NamedTuple: one is built per chain on each
    side, and a frozen dataclass costs several times as much to create)."""

    id: int
    discarded_pages: int = 0
    status: int = DONE
    reason: str = ""
    detail: str = ""
    errno: int = 0
    resident_bytes: int = 0


@dataclass(frozen=True)
class GuestFigures:
    guest_id: str
    ram_bytes: int
    resident_bytes: int
    lazily_free_bytes: int
    discarded_bytes: int
    reported_bytes: int
    chains: int
    refused_chains: int
    touched_bytes: int
    poison_skipped_chains: int
    peak_resident_bytes: int
    measured_by_kernel: bool
    failed_chains: int = 0
    sessions: int = 0


@dataclass(frozen=True)
class HostFigures:
    guests: list[GuestFigures]
    capacity_bytes: int
    resident_bytes: int
    peak_resident_bytes: int
    reclaimed_bytes: int
    chains: int
    refused_chains: int
    refusals: dict[str, int] = field(default_factory=dict)
    backend: str = ""
    self_guest: GuestFigures | None = None
    failed_chains: int = 0
    discard_errors: dict[str, int] = field(default_factory=dict)
    instance: str = ""


# The domain dataclasses name their fields as the messages do, so conversion is
# by name: a field added to one side and not the other fails loudly in tests.


def _from_message(cls: type[T], m: Message) -> T:
    return cls(**{f.name: getattr(m, f.name) for f in fields(cls)})


# ---- Negotiate -------------------------------------------------------------------


def encode_negotiate(n: Negotiation) -> pb.NegotiateRequest:
    return pb.NegotiateRequest(**asdict(n))


def decode_negotiate(m: pb.NegotiateRequest) -> Negotiation:
    return _from_message(Negotiation, m)


def encode_accepted(a: Accepted) -> pb.NegotiateReply:
    fields_ = asdict(a)
    fence = fields_.pop("fence")
    msg = pb.NegotiateReply(**fields_)
    if fence is not None:
        msg.fence.known = fence["known"]
        msg.fence.done_ids.extend(sorted(fence["done_ids"]))
    return msg


def decode_accepted(m: pb.NegotiateReply) -> Accepted:
    fence = Fence(m.fence.known, frozenset(m.fence.done_ids)) if m.HasField("fence") else None
    return Accepted(
        features=m.features,
        queue_size=m.queue_size,
        max_chain_ranges=m.max_chain_ranges,
        session=m.session,
        backend=m.backend,
        shm_path=m.shm_path,
        discard=m.discard,
        min_order=m.min_order,
        fence=fence,
        instance=m.instance,
        session_timeout_ms=m.session_timeout_ms,
    )


# ---- Reporting stream ------------------------------------------------------------


def encode_chain(chain_id: int, ranges: Sequence[Range]) -> pb.GuestMessage:
    return pb.GuestMessage(
        chain=pb.Chain(id=chain_id, pfn=[p for p, _ in ranges], order=[o for _, o in ranges])
    )


def encode_chain_msg(c: ChainMsg) -> pb.GuestMessage:
    return pb.GuestMessage(chain=pb.Chain(id=c.id, pfn=c.pfns, order=c.orders))


def encode_touched_msg(t: TouchedMsg) -> pb.GuestMessage:
    return pb.GuestMessage(touched=pb.Touched(pfn=t.pfns, count=t.counts))


def encode_touched(runs: Sequence[tuple[int, int]]) -> pb.GuestMessage:
    return pb.GuestMessage(touched=pb.Touched(pfn=[p for p, _ in runs], count=[c for _, c in runs]))


class ChainMsg(NamedTuple):
    id: int
    pfns: Sequence[int]
    orders: Sequence[int]


class TouchedMsg(NamedTuple):
    pfns: Sequence[int]
    counts: Sequence[int]


def decode_guest_message(m: pb.GuestMessage) -> ChainMsg | TouchedMsg | None:
    kind = m.WhichOneof("kind")
    if kind == "chain":
        return ChainMsg(m.chain.id, m.chain.pfn, m.chain.order)
    if kind == "touched":
        return TouchedMsg(m.touched.pfn, m.touched.count)
    return None


# Used is on the per-chain hot path: field by field (asdict() deep-copies and
# costs several microseconds a call).
def encode_used(u: UsedMsg) -> pb.Used:
    return pb.Used(
        id=u.id,
        discarded_pages=u.discarded_pages,
        status=cast("pb.UsedStatus", u.status),
        reason=u.reason,
        detail=u.detail,
        errno=u.errno,
        resident_bytes=u.resident_bytes,
    )


def decode_used(m: pb.Used) -> UsedMsg:
    return UsedMsg(m.id, m.discarded_pages, m.status, m.reason, m.detail, m.errno, m.resident_bytes)


# ---- Stats / Close ---------------------------------------------------------------


def encode_stats_request(session: str = "", self_only: bool = False) -> pb.StatsRequest:
    return pb.StatsRequest(session=session, self_only=self_only)


def decode_stats_request(m: pb.StatsRequest) -> tuple[str, bool]:
    """(session, self_only)."""
    return str(m.session), bool(m.self_only)


def _encode_guest(g: GuestFigures) -> pb.GuestStats:
    return pb.GuestStats(**asdict(g))


def _decode_guest(m: pb.GuestStats) -> GuestFigures:
    return _from_message(GuestFigures, m)


def encode_host_stats(h: HostFigures) -> pb.HostStats:
    msg = pb.HostStats(
        guests=[_encode_guest(g) for g in h.guests],
        capacity_bytes=h.capacity_bytes,
        resident_bytes=h.resident_bytes,
        peak_resident_bytes=h.peak_resident_bytes,
        reclaimed_bytes=h.reclaimed_bytes,
        chains=h.chains,
        refused_chains=h.refused_chains,
        refusals=h.refusals,
        backend=h.backend,
        failed_chains=h.failed_chains,
        discard_errors=h.discard_errors,
        instance=h.instance,
    )
    if h.self_guest is not None:
        msg.self.CopyFrom(_encode_guest(h.self_guest))
    return msg


def decode_host_stats(m: pb.HostStats) -> HostFigures:
    return HostFigures(
        guests=[_decode_guest(g) for g in m.guests],
        capacity_bytes=m.capacity_bytes,
        resident_bytes=m.resident_bytes,
        peak_resident_bytes=m.peak_resident_bytes,
        reclaimed_bytes=m.reclaimed_bytes,
        chains=m.chains,
        refused_chains=m.refused_chains,
        refusals=dict(m.refusals),
        backend=m.backend,
        self_guest=_decode_guest(m.self) if m.HasField("self") else None,
        failed_chains=m.failed_chains,
        discard_errors=dict(m.discard_errors),
        instance=m.instance,
    )


def encode_close(session: str) -> pb.CloseRequest:
    return pb.CloseRequest(session=session)


def decode_close(m: pb.CloseRequest) -> str:
    return str(m.session)


def close_reply() -> pb.CloseReply:
    return pb.CloseReply()


# ---- service plumbing -------------------------------------------------------------
# The generated *_pb2_grpc module has no type stubs; these Protocols give its
# stub and servicer surface the message types above, so callers are checked.

# Re-exported for the layers above, which never import *_pb2 themselves.
NegotiateRequest = pb.NegotiateRequest
NegotiateReply = pb.NegotiateReply
GuestMessage = pb.GuestMessage
Used = pb.Used
StatsRequest = pb.StatsRequest
HostStats = pb.HostStats
CloseRequest = pb.CloseRequest
CloseReply = pb.CloseReply


class BalloonStub(Protocol):
    """The client side on a blocking channel (grpc.Channel): tools and tests."""

    Negotiate: grpc.UnaryUnaryMultiCallable[pb.NegotiateRequest, pb.NegotiateReply]
    Reporting: grpc.StreamStreamMultiCallable[pb.GuestMessage, pb.Used]
    Stats: grpc.UnaryUnaryMultiCallable[pb.StatsRequest, pb.HostStats]
    Close: grpc.UnaryUnaryMultiCallable[pb.CloseRequest, pb.CloseReply]


class AioBalloonStub(Protocol):
    """The client side on an asyncio channel (grpc.aio.Channel): the guest's driver."""

    Negotiate: grpc.aio.UnaryUnaryMultiCallable[pb.NegotiateRequest, pb.NegotiateReply]
    Reporting: grpc.aio.StreamStreamMultiCallable[pb.GuestMessage, pb.Used]
    Stats: grpc.aio.UnaryUnaryMultiCallable[pb.StatsRequest, pb.HostStats]
    Close: grpc.aio.UnaryUnaryMultiCallable[pb.CloseRequest, pb.CloseReply]


# What a servicer method is handed: the asyncio server's per-call context.
Context = grpc.aio.ServicerContext[Message, Message]


def stub(channel: grpc.Channel) -> BalloonStub:
    return cast(BalloonStub, pb_grpc.BalloonStub(channel))


def aio_stub(channel: grpc.aio.Channel) -> AioBalloonStub:
    return cast(AioBalloonStub, pb_grpc.BalloonStub(channel))


class BalloonServicer(Protocol):
    """What the host implements: every RPC of the service (the generated base
    class would answer a forgotten one UNIMPLEMENTED; this makes it a type error)."""

    async def Negotiate(
        self, request: pb.NegotiateRequest, context: Context
    ) -> pb.NegotiateReply: ...

    def Reporting(
        self, request_iterator: AsyncIterator[pb.GuestMessage], context: Context
    ) -> AsyncIterator[pb.Used]: ...

    async def Stats(self, request: pb.StatsRequest, context: Context) -> pb.HostStats: ...

    async def Close(self, request: pb.CloseRequest, context: Context) -> pb.CloseReply: ...


def add_servicer(servicer: BalloonServicer, server: grpc.aio.Server) -> None:
    pb_grpc.add_BalloonServicer_to_server(servicer, server)


SERVICE_NAME = "pagehint.v1.Balloon"
