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
