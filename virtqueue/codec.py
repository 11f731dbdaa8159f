"""Conversions between domain types and wire messages. Nothing else imports *_pb2."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

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


@dataclass(frozen=True)
class Accepted:
    features: int
    queue_size: int
    max_chain_ranges: int
    session: str
    backend: str
    shm_path: str
    discard: str


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


# The domain dataclasses name their fields as the messages do, so conversion is
# by name: a field added to one side and not the other fails loudly in tests.


def _from_message(cls: type[T], m: Any) -> T:
    return cls(**{f.name: getattr(m, f.name) for f in fields(cls)})


# ---- Negotiate -------------------------------------------------------------------


def encode_negotiate(n: Negotiation) -> Any:
    return pb.NegotiateRequest(**asdict(n))


def decode_negotiate(m: Any) -> Negotiation:
    return _from_message(Negotiation, m)


def encode_accepted(a: Accepted) -> Any:
    return pb.NegotiateReply(**asdict(a))


def decode_accepted(m: Any) -> Accepted:
    return _from_message(Accepted, m)


# ---- Reporting stream ------------------------------------------------------------


def encode_chain(chain_id: int, ranges: Sequence[Range]) -> Any:
    return pb.GuestMessage(
        chain=pb.Chain(id=chain_id, pfn=[p for p, _ in ranges], order=[o for _, o in ranges])
    )


def encode_touched(runs: Sequence[tuple[int, int]]) -> Any:
    return pb.GuestMessage(touched=pb.Touched(pfn=[p for p, _ in runs], count=[c for _, c in runs]))


@dataclass(frozen=True)
class ChainMsg:
    id: int
    pfns: Sequence[int]
    orders: Sequence[int]


@dataclass(frozen=True)
class TouchedMsg:
    pfns: Sequence[int]
    counts: Sequence[int]


def decode_guest_message(m: Any) -> ChainMsg | TouchedMsg | None:
    kind = m.WhichOneof("kind")
    if kind == "chain":
        return ChainMsg(m.chain.id, m.chain.pfn, m.chain.order)
    if kind == "touched":
        return TouchedMsg(m.touched.pfn, m.touched.count)
    return None


def encode_used(chain_id: int, discarded_pages: int) -> Any:
    return pb.Used(id=chain_id, discarded_pages=discarded_pages)


def decode_used(m: Any) -> tuple[int, int]:
    return m.id, m.discarded_pages


# ---- Stats / Close ---------------------------------------------------------------


def encode_stats_request(session: str = "") -> Any:
    return pb.StatsRequest(session=session)


def decode_stats_request(m: Any) -> str:
    return str(m.session)


def _encode_guest(g: GuestFigures) -> Any:
    return pb.GuestStats(**asdict(g))


def _decode_guest(m: Any) -> GuestFigures:
    return _from_message(GuestFigures, m)


def encode_host_stats(h: HostFigures) -> Any:
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
    )
    if h.self_guest is not None:
        msg.self.CopyFrom(_encode_guest(h.self_guest))
    return msg


def decode_host_stats(m: Any) -> HostFigures:
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
    )


def encode_close(session: str) -> Any:
    return pb.CloseRequest(session=session)


def decode_close(m: Any) -> str:
    return str(m.session)


def close_reply() -> Any:
    return pb.CloseReply()


# ---- service plumbing -------------------------------------------------------------


def stub(channel: Any) -> Any:
    return pb_grpc.BalloonStub(channel)


def add_servicer(servicer: Any, server: Any) -> None:
    pb_grpc.add_BalloonServicer_to_server(servicer, server)


BalloonServicerBase: Any = pb_grpc.BalloonServicer
SERVICE_NAME = "pagehint.v1.Balloon"
