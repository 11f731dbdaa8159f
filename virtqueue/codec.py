"""Conversions between domain types and wire messages. Nothing else imports *_pb2."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar, cast

import grpc
import grpc.aio
from google.protobuf.message import DecodeError, Message

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

from virtqueue.v1 import balloon_pb2 as pb
from virtqueue.v1 import balloon_pb2_grpc as pb_grpc

SESSION_KEY = "x-pagehint-session"
# Without TLS, a guest's token (the host's --tokens), in every call's metadata.
TOKEN_KEY = "x-pagehint-token"
T = TypeVar("T", bound="DataclassInstance")
M = TypeVar("M", bound=Message)

Range = tuple[int, int]  # (pfn, order)


@dataclass(frozen=True)
class Negotiation:
    guest_id: str
    ram_bytes: int
    page_size: int
    features: int
    poison_val: int
    previous_session: str = ""
    # The guest follows the host's memory model (Notices): see the proto.
    host_memory: bool = False
    # The guest runs the rest of the balloon (inflate/deflate, stats): see the proto.
    balloon: bool = False
    # The guest takes part in snapshots (dirty log, pause, image check): issue 25.
    migration: bool = False
    # The guest may carry touches in its chains (Chain.touched): see the proto.
    touches_in_chain: bool = False


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
    # The host has --host-memory and the guest offered it: Notices will come.
    host_memory: bool = False
    # The guest offered the balloon and the host has it: targets will come.
    balloon: bool = False
    stats_interval_ms: int = 0
    # The guest offered migration and the host can snapshot it (shm).
    migration: bool = False
    # The guest offered touches in chains, and this host applies them.
    touches_in_chain: bool = False


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
    swapped_bytes: int = 0
    major_faults: int = 0
    minor_faults: int = 0


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
    host_memory_bytes: int = 0  # 0: unlimited
    swap_bytes: int = 0
    swap_used_bytes: int = 0
    swap_ins: int = 0
    swap_outs: int = 0
    oom_kills: int = 0
    vmm_overhead_bytes: int = 0


# The domain dataclasses name their fields as the messages do, so conversion is
# by name: a field added to one side and not the other fails loudly in tests.


# ---- what does not decode ------------------------------------------------------------
# gRPC answers a request deserializer's exception INTERNAL (a stream) or UNKNOWN (a
# unary call, with the exception's text) and logs its traceback: as if the host had a
# bug. The host's deserializers (add_servicer) hand the servicer a Malformed instead,
# and every decode_* function below raises Undecodable for it, which the service
# answers INVALID_ARGUMENT and counts as ``malformed``.


class Malformed:
    """Bytes that do not decode as the request message ``what`` (its full name)."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __repr__(self) -> str:
        return f"Malformed({self.what!r})"


class Undecodable(Exception):
    """A request that did not decode (the message says which); never a host bug."""


def _decoded(m: M | Malformed) -> M:
    if isinstance(m, Malformed):
        raise Undecodable(f"the request does not decode as {m.what}")
    return m


def lenient(cls: type[M]) -> Callable[[bytes], M | Malformed]:
    """A request deserializer that returns Malformed where ``cls.FromString`` raises."""
    parse = cls.FromString
    what = cls.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> M | Malformed:
        try:
            return parse(data)
        except DecodeError:
            return Malformed(what)

    return deserialize


def _from_message(cls: type[T], m: Message) -> T:
    return cls(**{f.name: getattr(m, f.name) for f in fields(cls)})


# ---- Negotiate -------------------------------------------------------------------


def encode_negotiate(n: Negotiation) -> pb.NegotiateRequest:
    return pb.NegotiateRequest(**asdict(n))


def decode_negotiate(m: pb.NegotiateRequest | Malformed) -> Negotiation:
    return _from_message(Negotiation, _decoded(m))


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
        host_memory=m.host_memory,
        balloon=m.balloon,
        stats_interval_ms=m.stats_interval_ms,
        migration=m.migration,
        touches_in_chain=m.touches_in_chain,
    )


# ---- Reporting stream ------------------------------------------------------------


def encode_chain_msg(c: ChainMsg) -> pb.GuestMessage:
    if c.touched is None:
        return pb.GuestMessage(chain=pb.Chain(id=c.id, pfn=c.pfns, order=c.orders))
    touched = _touched_pb(c.touched)
    return pb.GuestMessage(chain=pb.Chain(id=c.id, pfn=c.pfns, order=c.orders, touched=touched))


def encode_touched_msg(t: TouchedMsg) -> pb.GuestMessage:
    return pb.GuestMessage(touched=_touched_pb(t))


def _touched_pb(t: TouchedMsg) -> pb.Touched:
    return pb.Touched(pfn=t.pfns, count=t.counts, seq=t.seq, evict_ack=t.evict_ack)


def _touched_msg(t: pb.Touched) -> TouchedMsg:
    return TouchedMsg(t.pfn, t.count, t.seq, t.evict_ack)


class ChainMsg(NamedTuple):
    id: int
    pfns: Sequence[int]
    orders: Sequence[int]
    # The touches queued before it, carried in it (Chain.touched; None: none).
    touched: TouchedMsg | None = None


class TouchedMsg(NamedTuple):
    pfns: Sequence[int]
    counts: Sequence[int]
    # The guest's batch number (1, 2, ...): a Notice with touch_seq >= seq settles
    # it. 0 from a guest that did not negotiate host_memory (an older one too).
    seq: int = 0
    # The last Notice.evict_id taken in (0: none): see Touched.evict_ack.
    evict_ack: int = 0


class PagesMsg(NamedTuple):
    """Order-0 frames into (``inflate``) or out of the balloon (Pages)."""

    inflate: bool
    id: int
    pfns: Sequence[int]
    actual_pages: int


class StatsMsg(NamedTuple):
    """The stats queue's buffer: VIRTIO_BALLOON_S_* tags and their values."""

    tags: Sequence[int]
    values: Sequence[int]


class DirtyMsg(NamedTuple):
    """The guest's dirty log for one round (DirtyLog): (pfn, count) runs."""

    round: int
    runs: Sequence[tuple[int, int]]
    paused: bool = False
    more: bool = False


class ImageCheckedMsg(NamedTuple):
    image: str
    pages_checked: int
    pages_lost: int
    error: str = ""


def encode_dirty_msg(d: DirtyMsg) -> pb.GuestMessage:
    return pb.GuestMessage(
        dirty=pb.DirtyLog(
            round=d.round,
            pfn=[p for p, _ in d.runs],
            count=[c for _, c in d.runs],
            paused=d.paused,
            more=d.more,
        )
    )


def encode_image_msg(i: ImageCheckedMsg) -> pb.GuestMessage:
    return pb.GuestMessage(
        image=pb.ImageChecked(
            image=i.image, pages_checked=i.pages_checked, pages_lost=i.pages_lost, error=i.error
        )
    )


class HintMsg(NamedTuple):
    """The free page hint queue (FreePageHint): a command id (``cmd``) or blocks
    of 2**order pages."""

    cmd: bool
    cmd_id: int
    pfns: Sequence[int] = ()
    order: int = 0


def encode_hint_msg(h: HintMsg) -> pb.GuestMessage:
    return pb.GuestMessage(
        hint=pb.FreePageHint(cmd=h.cmd, cmd_id=h.cmd_id, pfn=h.pfns, order=h.order)
    )


def encode_pages_msg(p: PagesMsg) -> pb.GuestMessage:
    pages = pb.Pages(id=p.id, pfn=p.pfns, actual_pages=p.actual_pages)
    return pb.GuestMessage(inflate=pages) if p.inflate else pb.GuestMessage(deflate=pages)


def encode_stats_msg(s: StatsMsg) -> pb.GuestMessage:
    return pb.GuestMessage(stats=pb.BalloonStats(tag=s.tags, value=s.values))


GuestMsg = ChainMsg | TouchedMsg | PagesMsg | StatsMsg | HintMsg | DirtyMsg | ImageCheckedMsg


def encode_guest_msg(msg: GuestMsg) -> pb.GuestMessage:
    """Any guest message on the Reporting stream (chains first: the hot path)."""
    if isinstance(msg, ChainMsg):
        return encode_chain_msg(msg)
    if isinstance(msg, TouchedMsg):
        return encode_touched_msg(msg)
    if isinstance(msg, PagesMsg):
        return encode_pages_msg(msg)
    if isinstance(msg, HintMsg):
        return encode_hint_msg(msg)
    if isinstance(msg, DirtyMsg):
        return encode_dirty_msg(msg)
    if isinstance(msg, ImageCheckedMsg):
        return encode_image_msg(msg)
    return encode_stats_msg(msg)


def decode_guest_message(m: pb.GuestMessage | Malformed) -> GuestMsg | None:
    """A chain, a touch batch, balloon pages or stats; None for an empty message;
    Undecodable for Malformed."""
    if isinstance(m, Malformed):
        raise Undecodable(f"a message that does not decode as {m.what}")
    kind = m.WhichOneof("kind")
    if kind == "chain":
        c = m.chain
        if not c.HasField("touched"):
            return ChainMsg(c.id, c.pfn, c.order)
        return ChainMsg(c.id, c.pfn, c.order, _touched_msg(c.touched))
    if kind == "touched":
        return _touched_msg(m.touched)
    if kind in ("inflate", "deflate"):
        p = m.inflate if kind == "inflate" else m.deflate
        return PagesMsg(kind == "inflate", p.id, p.pfn, p.actual_pages)
    if kind == "stats":
        return StatsMsg(m.stats.tag, m.stats.value)
    if kind == "hint":
        h = m.hint
        return HintMsg(h.cmd, h.cmd_id, h.pfn, h.order)
    if kind == "dirty":
        d = m.dirty
        if len(d.pfn) != len(d.count):
            raise Undecodable("a dirty log whose arrays differ in length")
        return DirtyMsg(d.round, list(zip(d.pfn, d.count, strict=True)), d.paused, d.more)
    if kind == "image":
        i = m.image
        return ImageCheckedMsg(i.image, i.pages_checked, i.pages_lost, i.error)
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


class NoticeMsg(NamedTuple):
    """The host's memory model speaking to a guest that negotiated host_memory
    (a Used with ``notice`` set, answering no chain)."""

    evicted: list[tuple[int, int]]  # (pfn, count) runs the host no longer holds
    touch_seq: int  # the Touched batch this settles (0: none, eviction only)
    delay_us: int  # what the guest's workload must wait for that batch
    major: int  # that batch's major faults (swap-ins)
    minor: int  # that batch's minor faults (zero fills)
    # Non-zero: the host moves the evicted frames' bytes only once the guest
    # acknowledges this id (Touched.evict_ack); shm only.
    evict_id: int = 0


def encode_notice(n: NoticeMsg) -> pb.Used:
    return pb.Used(
        notice=pb.Notice(
            evicted_pfn=[p for p, _ in n.evicted],
            evicted_count=[c for _, c in n.evicted],
            touch_seq=n.touch_seq,
            delay_us=n.delay_us,
            major_faults=n.major,
            minor_faults=n.minor,
            evict_id=n.evict_id,
        )
    )


class ConfigMsg(NamedTuple):
    """The host's balloon config changed (virtio's config change): a Used with
    ``config`` set, answering nothing. The whole config space each time: the
    target, and the free page hint command id (0, STOP, from an older host)."""

    num_pages: int
    free_page_hint_cmd_id: int = 0
    dirty_round: int = 0  # snapshots (issue 25): see BalloonConfig
    pause: bool = False
    check_image: str = ""


def encode_config(c: ConfigMsg) -> pb.Used:
    return pb.Used(config=pb.BalloonConfig(**c._asdict()))


def decode_used(m: pb.Used) -> UsedMsg | NoticeMsg | ConfigMsg:
    """A chain's (or pages') answer, a Notice (``notice`` set) or a new target
    (``config`` set); the last two answer nothing."""
    if m.HasField("config"):
        c = m.config
        return ConfigMsg(
            c.num_pages, c.free_page_hint_cmd_id, c.dirty_round, c.pause, c.check_image
        )
    if m.HasField("notice"):
        n = m.notice
        return NoticeMsg(
            list(zip(n.evicted_pfn, n.evicted_count, strict=False)),
            n.touch_seq,
            n.delay_us,
            n.major_faults,
            n.minor_faults,
            n.evict_id,
        )
    return UsedMsg(m.id, m.discarded_pages, m.status, m.reason, m.detail, m.errno, m.resident_bytes)


# ---- Stats / Close ---------------------------------------------------------------


def encode_stats_request(session: str = "", self_only: bool = False) -> pb.StatsRequest:
    return pb.StatsRequest(session=session, self_only=self_only)


def decode_stats_request(m: pb.StatsRequest | Malformed) -> tuple[str, bool]:
    """(session, self_only)."""
    m = _decoded(m)
    return str(m.session), bool(m.self_only)


# Field by field, not dataclasses.asdict: asdict deep-copies each value, and a host
# with hundreds of guests encodes them for every figures poll (its loop waits).
_GUEST_FIELDS = tuple(f.name for f in fields(GuestFigures))


def _encode_guest(g: GuestFigures) -> pb.GuestStats:
    return pb.GuestStats(**{name: getattr(g, name) for name in _GUEST_FIELDS})


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
        host_memory_bytes=h.host_memory_bytes,
        swap_bytes=h.swap_bytes,
        swap_used_bytes=h.swap_used_bytes,
        swap_ins=h.swap_ins,
        swap_outs=h.swap_outs,
        oom_kills=h.oom_kills,
        vmm_overhead_bytes=h.vmm_overhead_bytes,
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
        host_memory_bytes=m.host_memory_bytes,
        swap_bytes=m.swap_bytes,
        swap_used_bytes=m.swap_used_bytes,
        swap_ins=m.swap_ins,
        swap_outs=m.swap_outs,
        oom_kills=m.oom_kills,
        vmm_overhead_bytes=m.vmm_overhead_bytes,
    )


def encode_close(session: str) -> pb.CloseRequest:
    return pb.CloseRequest(session=session)


def decode_close(m: pb.CloseRequest | Malformed) -> str:
    return str(_decoded(m).session)


def close_reply() -> pb.CloseReply:
    return pb.CloseReply()


# ---- Balloon (the target from outside) ----------------------------------------------


@dataclass(frozen=True)
class BalloonState:
    """One guest's balloon as the host knows it (BalloonStatus)."""

    guest_id: str
    balloon: bool
    target_bytes: int
    actual_bytes: int
    stats: dict[str, int]
    stats_age_ms: int
    inflated_pages: int
    deflated_pages: int


def encode_balloon_request(guest_id: str, target_bytes: int | None) -> pb.BalloonRequest:
    return pb.BalloonRequest(
        guest_id=guest_id, set_target=target_bytes is not None, target_bytes=target_bytes or 0
    )


def decode_balloon_request(m: pb.BalloonRequest | Malformed) -> tuple[str, int | None]:
    """(guest id, the target to set, or None to only read)."""
    m = _decoded(m)
    return str(m.guest_id), int(m.target_bytes) if m.set_target else None


def encode_balloon_status(b: BalloonState) -> pb.BalloonStatus:
    return pb.BalloonStatus(**asdict(b))


def decode_balloon_status(m: pb.BalloonStatus) -> BalloonState:
    return BalloonState(
        guest_id=m.guest_id,
        balloon=m.balloon,
        target_bytes=m.target_bytes,
        actual_bytes=m.actual_bytes,
        stats=dict(m.stats),
        stats_age_ms=m.stats_age_ms,
        inflated_pages=m.inflated_pages,
        deflated_pages=m.deflated_pages,
    )


# ---- Hint (free page hinting from outside) -----------------------------------------

HINT_STATUS, HINT_START, HINT_STOP = 0, 1, 2
HINT_ACTIONS = {"status": HINT_STATUS, "start": HINT_START, "stop": HINT_STOP}


@dataclass(frozen=True)
class HintState:
    """One guest's free page hinting as the host knows it (HintStatus)."""

    guest_id: str
    hinting: bool
    host_cmd: int
    has_guest_cmd: bool
    guest_cmd: int
    hinted_pages: int
    runs: int


def encode_hint_request(guest_id: str, action: int, acknowledge_on_stop: bool) -> pb.HintRequest:
    return pb.HintRequest(
        guest_id=guest_id,
        action=cast("pb.HintAction", action),
        acknowledge_on_stop=acknowledge_on_stop,
    )


def decode_hint_request(m: pb.HintRequest | Malformed) -> tuple[str, int, bool]:
    """(guest id, action, acknowledge_on_stop); an unknown action is Undecodable."""
    m = _decoded(m)
    if int(m.action) not in HINT_ACTIONS.values():
        raise Undecodable(f"unknown hint action {int(m.action)}")
    return str(m.guest_id), int(m.action), bool(m.acknowledge_on_stop)


def encode_hint_status(h: HintState) -> pb.HintStatus:
    return pb.HintStatus(**asdict(h))


def decode_hint_status(m: pb.HintStatus) -> HintState:
    return HintState(
        guest_id=m.guest_id,
        hinting=m.hinting,
        host_cmd=m.host_cmd,
        has_guest_cmd=m.has_guest_cmd,
        guest_cmd=m.guest_cmd,
        hinted_pages=m.hinted_pages,
        runs=m.runs,
    )


# ---- Snapshot ---------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotOptions:
    guest_id: str
    use_hints: bool
    unsafe_trust_hints: bool = False
    max_rounds: int = 0


@dataclass(frozen=True)
class SnapshotResult:
    guest_id: str
    pages_copied: int
    pages_skipped: int
    zero_pages: int
    rounds: int
    downtime_us: int
    total_us: int
    pages_checked: int
    pages_lost: int
    hinted_pages: int
    image: str


def encode_snapshot_request(o: SnapshotOptions) -> pb.SnapshotRequest:
    return pb.SnapshotRequest(**asdict(o))


def decode_snapshot_request(m: pb.SnapshotRequest | Malformed) -> SnapshotOptions:
    return _from_message(SnapshotOptions, _decoded(m))


def encode_snapshot_report(r: SnapshotResult) -> pb.SnapshotReport:
    return pb.SnapshotReport(**asdict(r))


def decode_snapshot_report(m: pb.SnapshotReport) -> SnapshotResult:
    return _from_message(SnapshotResult, m)


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
BalloonRequest = pb.BalloonRequest
BalloonStatus = pb.BalloonStatus
HintRequest = pb.HintRequest
HintStatus = pb.HintStatus
SnapshotRequest = pb.SnapshotRequest
SnapshotReport = pb.SnapshotReport


class BalloonStub(Protocol):
    """The client side on a blocking channel (grpc.Channel): tools and tests."""

    Negotiate: grpc.UnaryUnaryMultiCallable[pb.NegotiateRequest, pb.NegotiateReply]
    Reporting: grpc.StreamStreamMultiCallable[pb.GuestMessage, pb.Used]
    Stats: grpc.UnaryUnaryMultiCallable[pb.StatsRequest, pb.HostStats]
    Close: grpc.UnaryUnaryMultiCallable[pb.CloseRequest, pb.CloseReply]
    Balloon: grpc.UnaryUnaryMultiCallable[pb.BalloonRequest, pb.BalloonStatus]
    Hint: grpc.UnaryUnaryMultiCallable[pb.HintRequest, pb.HintStatus]
    Snapshot: grpc.UnaryUnaryMultiCallable[pb.SnapshotRequest, pb.SnapshotReport]


class AioBalloonStub(Protocol):
    """The client side on an asyncio channel (grpc.aio.Channel): the guest's driver."""

    Negotiate: grpc.aio.UnaryUnaryMultiCallable[pb.NegotiateRequest, pb.NegotiateReply]
    Reporting: grpc.aio.StreamStreamMultiCallable[pb.GuestMessage, pb.Used]
    Stats: grpc.aio.UnaryUnaryMultiCallable[pb.StatsRequest, pb.HostStats]
    Close: grpc.aio.UnaryUnaryMultiCallable[pb.CloseRequest, pb.CloseReply]
    Balloon: grpc.aio.UnaryUnaryMultiCallable[pb.BalloonRequest, pb.BalloonStatus]
    Hint: grpc.aio.UnaryUnaryMultiCallable[pb.HintRequest, pb.HintStatus]
    Snapshot: grpc.aio.UnaryUnaryMultiCallable[pb.SnapshotRequest, pb.SnapshotReport]


# What a servicer method is handed: the asyncio server's per-call context.
Context = grpc.aio.ServicerContext[Message, Message]


def stub(channel: grpc.Channel) -> BalloonStub:
    return cast(BalloonStub, pb_grpc.BalloonStub(channel))


def aio_stub(channel: grpc.aio.Channel) -> AioBalloonStub:
    return cast(AioBalloonStub, pb_grpc.BalloonStub(channel))


class BalloonServicer(Protocol):
    """What the host implements: every RPC of the service (the generated base
    class would answer a forgotten one UNIMPLEMENTED; this makes it a type error).
    A request that does not decode arrives as Malformed (see ``lenient``)."""

    async def Negotiate(
        self, request: pb.NegotiateRequest | Malformed, context: Context
    ) -> pb.NegotiateReply: ...

    def Reporting(
        self, request_iterator: AsyncIterator[pb.GuestMessage | Malformed], context: Context
    ) -> AsyncIterator[pb.Used]: ...

    async def Stats(
        self, request: pb.StatsRequest | Malformed, context: Context
    ) -> pb.HostStats: ...

    async def Close(
        self, request: pb.CloseRequest | Malformed, context: Context
    ) -> pb.CloseReply: ...

    async def Balloon(
        self, request: pb.BalloonRequest | Malformed, context: Context
    ) -> pb.BalloonStatus: ...

    async def Hint(
        self, request: pb.HintRequest | Malformed, context: Context
    ) -> pb.HintStatus: ...

    async def Snapshot(
        self, request: pb.SnapshotRequest | Malformed, context: Context
    ) -> pb.SnapshotReport: ...


def add_servicer(servicer: BalloonServicer, server: grpc.aio.Server) -> None:
    """The generated add_BalloonServicer_to_server, with lenient request deserializers."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Negotiate": grpc.unary_unary_rpc_method_handler(
            servicer.Negotiate,
            request_deserializer=lenient(pb.NegotiateRequest),
            response_serializer=pb.NegotiateReply.SerializeToString,
        ),
        "Reporting": grpc.stream_stream_rpc_method_handler(
            servicer.Reporting,
            request_deserializer=lenient(pb.GuestMessage),
            response_serializer=pb.Used.SerializeToString,
        ),
        "Stats": grpc.unary_unary_rpc_method_handler(
            servicer.Stats,
            request_deserializer=lenient(pb.StatsRequest),
            response_serializer=pb.HostStats.SerializeToString,
        ),
        "Close": grpc.unary_unary_rpc_method_handler(
            servicer.Close,
            request_deserializer=lenient(pb.CloseRequest),
            response_serializer=pb.CloseReply.SerializeToString,
        ),
        "Balloon": grpc.unary_unary_rpc_method_handler(
            servicer.Balloon,
            request_deserializer=lenient(pb.BalloonRequest),
            response_serializer=pb.BalloonStatus.SerializeToString,
        ),
        "Hint": grpc.unary_unary_rpc_method_handler(
            servicer.Hint,
            request_deserializer=lenient(pb.HintRequest),
            response_serializer=pb.HintStatus.SerializeToString,
        ),
        "Snapshot": grpc.unary_unary_rpc_method_handler(
            servicer.Snapshot,
            request_deserializer=lenient(pb.SnapshotRequest),
            response_serializer=pb.SnapshotReport.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


SERVICE_NAME = "pagehint.v1.Balloon"
