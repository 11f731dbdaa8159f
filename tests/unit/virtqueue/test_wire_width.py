"""The wire across versions, and the host's lenient request deserializers.

The numbers a guest sends (page size, poison value, capacity, chain orders,
touched counts) were uint32 and are uint64 now, so that the host reads what was
sent at full width. A varint is the same bytes either way: messages of the
earlier descriptor (rebuilt here from the current one, those fields made uint32
again) and of the current one are byte for byte the same for every value a peer
of either version sends, and each version reads the other's.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from virtqueue import codec
from virtqueue.v1 import balloon_pb2 as pb

WIDENED = {
    "NegotiateRequest": ("page_size", "poison_val", "capacity"),
    "Chain": ("order",),
    "Touched": ("count",),
}


def earlier_classes() -> dict[str, Any]:
    """The message classes of the wire before the widening (in a pool of their own)."""
    proto = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(proto)
    for message in proto.message_type:
        for f in message.field:
            if f.name in WIDENED.get(message.name, ()):
                assert f.type == descriptor_pb2.FieldDescriptorProto.TYPE_UINT64
                f.type = descriptor_pb2.FieldDescriptorProto.TYPE_UINT32
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"pagehint.v1.{name}"))
        for name in ("NegotiateRequest", "GuestMessage")
    }


def test_every_value_a_peer_sends_is_the_same_bytes_and_reads_both_ways() -> None:
    old = earlier_classes()
    messages: list[dict[str, Any]] = []
    for order in range(11):
        messages.append({"chain": {"id": 7, "pfn": [0, 1024], "order": [order, 10]}})
    for count in (1, 512, 2**32 - 1):
        messages.append({"touched": {"pfn": [3], "count": [count]}})
    for kwargs in messages:
        new_msg = pb.GuestMessage(**kwargs)
        old_msg = old["GuestMessage"](**kwargs)
        assert new_msg.SerializeToString() == old_msg.SerializeToString()
        assert old["GuestMessage"].FromString(new_msg.SerializeToString()) == old_msg
        assert pb.GuestMessage.FromString(old_msg.SerializeToString()) == new_msg
    for poison, capacity in ((0, 1), (0xAA, 32), (0xFF, 4096)):
        n: dict[str, Any] = {
            "guest_id": "g",
            "ram_bytes": 1 << 30,
            "page_size": 4096,
            "features": 32,
            "poison_val": poison,
            "capacity": capacity,
            "previous_session": "s",
        }
        new_n = pb.NegotiateRequest(**n)
        old_n = old["NegotiateRequest"](**n)
        assert new_n.SerializeToString() == old_n.SerializeToString()
        assert pb.NegotiateRequest.FromString(old_n.SerializeToString()) == new_n


class _Servicer:
    async def Negotiate(self, request: Any, context: Any) -> Any: ...
    def Reporting(self, request_iterator: Any, context: Any) -> Any: ...
    async def Stats(self, request: Any, context: Any) -> Any: ...
    async def Close(self, request: Any, context: Any) -> Any: ...
    async def Balloon(self, request: Any, context: Any) -> Any: ...
    async def Hint(self, request: Any, context: Any) -> Any: ...
    async def Snapshot(self, request: Any, context: Any) -> Any: ...


class _Server:
    def __init__(self) -> None:
        self.generic: Any = None
        self.registered: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic = handlers

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        assert service == codec.SERVICE_NAME
        self.registered = handlers


def test_every_rpc_gets_a_deserializer_that_hands_over_malformed_bytes() -> None:
    server = _Server()
    codec.add_servicer(_Servicer(), server)  # type: ignore[arg-type]
    methods = pb.DESCRIPTOR.services_by_name["Balloon"].methods
    assert set(server.registered) == {m.name for m in methods} and server.generic
    for m in methods:
        deserialize = server.registered[m.name].request_deserializer
        bad = deserialize(b"\xff\xff\xff")
        assert isinstance(bad, codec.Malformed) and bad.what == m.input_type.full_name
        assert deserialize(b"") == message_factory.GetMessageClass(m.input_type)()


@pytest.mark.parametrize(
    "decode",
    [
        codec.decode_negotiate,
        codec.decode_guest_message,
        codec.decode_stats_request,
        codec.decode_close,
    ],
)
def test_every_decoder_refuses_malformed(decode: Any) -> None:
    with pytest.raises(codec.Undecodable, match=r"does not decode as pagehint\.v1\.X"):
        decode(codec.Malformed("pagehint.v1.X"))


# ---- issue 23: the host's memory model, additive ----------------------------------------
# Fields and the Notice message added for --host-memory; a peer built before them must
# keep working both ways: it sends none of them (read here as their defaults: off), and
# what a new peer sends it with them at their defaults is the same bytes it sent before.

ADDED = {
    "NegotiateRequest": ("host_memory",),
    "NegotiateReply": ("host_memory",),
    "Touched": ("seq",),
    "Used": ("notice",),
    "GuestStats": ("swapped_bytes", "major_faults", "minor_faults"),
    "HostStats": (
        "host_memory_bytes",
        "swap_bytes",
        "swap_used_bytes",
        "swap_ins",
        "swap_outs",
        "oom_kills",
        "vmm_overhead_bytes",
    ),
}


# What issue 24 added (the rest of the balloon): fields, and the messages only they use.
BALLOON_ADDED = {
    "NegotiateRequest": ("balloon",),
    "NegotiateReply": ("balloon", "stats_interval_ms"),
    "GuestMessage": ("inflate", "deflate", "stats"),
    "Used": ("config",),
}
BALLOON_MESSAGES = ("Pages", "BalloonStats", "BalloonConfig", "BalloonRequest", "BalloonStatus")


def pre_host_memory_classes(
    added: dict[str, tuple[str, ...]] = ADDED, messages: tuple[str, ...] = ("Notice",)
) -> dict[str, Any]:
    """The message classes of the wire before issue 23 (or another issue's ``added``
    fields and ``messages``), in a pool of their own."""
    proto = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(proto)
    for message in proto.message_type:
        gone = added.get(message.name, ())
        keep = [f for f in message.field if f.name not in gone]
        assert len(message.field) - len(keep) == len(gone), message.name
        del message.field[:]
        message.field.extend(keep)
    keep_msgs = [m for m in proto.message_type if m.name not in messages]
    del proto.message_type[:]
    proto.message_type.extend(keep_msgs)
    for service in proto.service:
        methods = [m for m in service.method if m.input_type.rsplit(".", 1)[-1] not in messages]
        del service.method[:]
        service.method.extend(methods)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    names = ("NegotiateRequest", "NegotiateReply", "GuestMessage", "Used", "HostStats")
    return {
        n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"pagehint.v1.{n}"))
        for n in names
    }


def test_older_peers_interoperate_with_the_host_memory_fields() -> None:
    old = pre_host_memory_classes()
    # an old guest's negotiation: read as not offering host_memory
    req = old["NegotiateRequest"](guest_id="g", ram_bytes=1 << 30, page_size=4096, capacity=32)
    assert codec.decode_negotiate(pb.NegotiateRequest.FromString(req.SerializeToString())) == (
        codec.Negotiation("g", 1 << 30, 4096, 0, 0)
    )
    # a new guest's offer to an old host: the old host reads the rest as before
    offer = codec.encode_negotiate(codec.Negotiation("g", 1 << 30, 4096, 32, 0, "", True))
    # (the capacity field is no longer sent: an old host reads 0 as its own maximum)
    assert old["NegotiateRequest"].FromString(offer.SerializeToString()).capacity == 0
    # an old host's reply: read as host_memory off (no Notices will come)
    reply = old["NegotiateReply"](session="s", backend="sim", queue_size=64)
    accepted = codec.decode_accepted(pb.NegotiateReply.FromString(reply.SerializeToString()))
    assert accepted.host_memory is False and accepted.session == "s"
    # with the feature off a new host's reply and a new guest's touches are the old bytes
    off = codec.encode_accepted(codec.Accepted(0, 64, 0, "s", "sim", "", ""))
    assert off.SerializeToString() == reply.SerializeToString()
    touched = codec.encode_touched_msg(codec.TouchedMsg([3], [1]))
    old_touched = old["GuestMessage"](touched={"pfn": [3], "count": [1]})
    assert touched.SerializeToString() == old_touched.SerializeToString()
    # an old guest's touches read with seq 0; a new guest's seq is skipped by an old host
    decoded = codec.decode_guest_message(
        pb.GuestMessage.FromString(old_touched.SerializeToString())
    )
    assert isinstance(decoded, codec.TouchedMsg) and decoded.seq == 0
    seqd = codec.encode_touched_msg(codec.TouchedMsg([3], [1], 9)).SerializeToString()
    assert list(old["GuestMessage"].FromString(seqd).touched.count) == [1]
    # an old host's answers are chains' answers, never Notices
    used = old["Used"](id=4, discarded_pages=512, resident_bytes=4096)
    assert codec.decode_used(pb.Used.FromString(used.SerializeToString())) == codec.UsedMsg(
        4, 512, codec.DONE, "", "", 0, 4096
    )


def test_older_peers_read_the_stats_of_a_host_with_memory() -> None:
    old = pre_host_memory_classes()
    g = codec.GuestFigures("g", 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, False, 0, 1, 4096, 2, 3)
    h = codec.HostFigures([g], 0, 2, 2, 0, 6, 1, {}, "sim", g, 0, {}, "i", 1 << 30, 1 << 29)
    wire = codec.encode_host_stats(h).SerializeToString()
    got = old["HostStats"].FromString(wire)
    assert (got.resident_bytes, got.guests[0].touched_bytes, got.self.sessions) == (2, 8, 1)
    # and a new reader of an old host's stats gets the memory model's figures as 0
    old_h = old["HostStats"](resident_bytes=2, backend="sim", guests=[{"guest_id": "g"}])
    new = codec.decode_host_stats(pb.HostStats.FromString(old_h.SerializeToString()))
    assert (new.host_memory_bytes, new.swap_used_bytes, new.guests[0].major_faults) == (0, 0, 0)


def test_older_peers_interoperate_with_the_balloon_fields() -> None:
    old = pre_host_memory_classes(BALLOON_ADDED, BALLOON_MESSAGES)
    # an old guest's negotiation: read as not offering the balloon
    req = old["NegotiateRequest"](guest_id="g", ram_bytes=1 << 30, page_size=4096)
    assert codec.decode_negotiate(pb.NegotiateRequest.FromString(req.SerializeToString())) == (
        codec.Negotiation("g", 1 << 30, 4096, 0, 0)
    )
    # a new guest's offer to an old host: the old host reads the rest as before
    offer = codec.encode_negotiate(codec.Negotiation("g", 1 << 30, 4096, 32, 0, balloon=True))
    assert old["NegotiateRequest"].FromString(offer.SerializeToString()).guest_id == "g"
    # an old host's reply: no balloon, no stats (the guest never inflates)
    reply = old["NegotiateReply"](session="s", backend="sim", queue_size=64)
    accepted = codec.decode_accepted(pb.NegotiateReply.FromString(reply.SerializeToString()))
    assert (accepted.balloon, accepted.stats_interval_ms) == (False, 0)
    # with the balloon off a new host's reply is the old bytes
    off = codec.encode_accepted(codec.Accepted(0, 64, 0, "s", "sim", "", ""))
    assert off.SerializeToString() == reply.SerializeToString()
