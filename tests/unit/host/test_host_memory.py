"""The host's memory model on the wire (--host-memory): negotiation, a Notice per
touch batch (its cost and faults), evictions told to the guest that lost its
frames on its own stream, the OOM killer ending a session ABORTED, refusals,
figures and metrics. In process: HostServer on a loopback port, the codec's stub."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc
import grpc.aio
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from host.metrics import host_metrics
from host.server import HostServer, _listening_line
from pagehint.config import ConfigError, HostConfig
from pagehint.metrics import FnCollector
from tests.logs import log_lines
from tests.wire import encode_chain, encode_touched
from virtqueue import codec
from virtqueue import features as F

MIB = 1 << 20
CHUNK = 512  # frames in 2 MiB
Host = tuple[HostServer, codec.AioBalloonStub, list[str]]
Call = grpc.aio.StreamStreamCall[Any, Any]
MakeHost = Callable[..., Awaitable[Host]]


def _cfg(**kw: object) -> HostConfig:
    base: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "drain_seconds": 1.0,
        "host_memory_bytes": 96 * MIB,
        "swap_bytes": 64 * MIB,
        "vmm_overhead_bytes": 0,
    }
    base.update(kw)
    return HostConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
async def make_host() -> AsyncIterator[MakeHost]:
    made: list[tuple[HostServer, grpc.aio.Channel]] = []

    async def make(**kw: object) -> Host:
        lines = log_lines()
        server = HostServer(_cfg(**kw))
        addr = await server.start()
        await server.serving()
        channel = grpc.aio.insecure_channel(addr)
        made.append((server, channel))
        return server, codec.aio_stub(channel), lines

    yield make
    for server, channel in made:
        await channel.close()
        await server.stop()


async def _negotiate(
    stub: codec.AioBalloonStub, guest_id: str, ram: int = 64 * MIB, offer: bool = True
) -> codec.Accepted:
    n = codec.Negotiation(
        guest_id=guest_id,
        ram_bytes=ram,
        page_size=4096,
        features=F.mask(F.REPORTING),
        poison_val=0,
        host_memory=offer,
    )
    return codec.decode_accepted(await stub.Negotiate(codec.encode_negotiate(n), timeout=5))


async def _notice(call: Call) -> codec.NoticeMsg:
    got = codec.decode_used(cast(codec.Used, await call.read()))
    assert isinstance(got, codec.NoticeMsg), got
    return got


async def test_host_memory_is_negotiated_only_when_both_sides_have_it(make_host: MakeHost) -> None:
    _, stub, lines = await make_host()
    assert (await _negotiate(stub, "new")).host_memory
    assert not (await _negotiate(stub, "old", offer=False)).host_memory
    assert any("new negotiated" in line and "host memory model" in line for line in lines)
    _, plain, _ = await make_host(host_memory_bytes=None, swap_bytes=0)
    assert not (await _negotiate(plain, "new")).host_memory


async def test_a_touch_is_answered_with_its_cost_and_others_hear_of_their_evictions(
    make_host: MakeHost,
) -> None:
    server, stub, _ = await make_host(swap_in_cost=1e-3, swap_out_cost=1e-4)
    a = await _negotiate(stub, "a")
    b = await _negotiate(stub, "b")
    call_a = stub.Reporting(metadata=((codec.SESSION_KEY, a.session),))
    call_b = stub.Reporting(metadata=((codec.SESSION_KEY, b.session),))
    await call_a.write(encode_touched([(0, 16384)], seq=1))  # all of a's 64 MiB
    assert await _notice(call_a) == codec.NoticeMsg([], 1, 0, 0, 16384)
    # b's 64 MiB push the host 32 MiB over: a's 16 oldest chunks go to swap, and b,
    # whose faults forced the writes, waits for them
    await call_b.write(encode_touched([(0, 16384)], seq=1))
    n = await _notice(call_b)
    assert (n.touch_seq, n.major, n.minor, n.evicted) == (1, 0, 16384, [])
    assert n.delay_us == round(8192 * 1e-4 * 1e6)
    # a sent nothing, and hears at once which of its frames went (touch_seq 0)
    assert await _notice(call_a) == codec.NoticeMsg([(0, 8192)], 0, 0, 0, 0)
    # a touches a swapped chunk: 512 major faults, and the coldest chunk (a's next)
    # goes out to make room: both on a's bill
    await call_a.write(encode_touched([(0, CHUNK)], seq=2))
    n = await _notice(call_a)
    assert (n.touch_seq, n.major, n.minor, n.evicted) == (2, CHUNK, 0, [(8192, CHUNK)])
    assert n.delay_us == round(CHUNK * 1e-3 * 1e6 + CHUNK * 1e-4 * 1e6)
    stats = codec.decode_host_stats(await stub.Stats(codec.encode_stats_request(), timeout=5))
    assert (stats.host_memory_bytes, stats.swap_bytes) == (96 * MIB, 64 * MIB)
    assert stats.swap_used_bytes == 32 * MIB and stats.swap_ins == CHUNK
    assert stats.swap_outs == 8192 + CHUNK and stats.oom_kills == 0
    ga = next(g for g in stats.guests if g.guest_id == "a")
    assert ga.swapped_bytes == 32 * MIB and ga.major_faults == CHUNK
    assert ga.minor_faults == 16384 and ga.resident_bytes == 32 * MIB
    assert ga.discarded_bytes == 0  # swapped frames are not discarded ones
    text = generate_latest(_registry(server)).decode()
    assert "pagehint_host_swap_used_bytes 3.3554432e+07" in text
    assert 'pagehint_host_major_faults_total{guest="a"} 512.0' in text
    assert "pagehint_host_oom_kills_total 0.0" in text
    call_a.cancel()
    call_b.cancel()


def _registry(server: HostServer) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(FnCollector(lambda: host_metrics(server.device)))
    return reg


async def test_the_oom_killer_ends_the_largest_guest_aborted_with_its_reason(
    make_host: MakeHost,
) -> None:
    server, stub, lines = await make_host(swap_bytes=16 * MIB)
    a = await _negotiate(stub, "a")
    b = await _negotiate(stub, "b")
    call_a = stub.Reporting(metadata=((codec.SESSION_KEY, a.session),))
    call_b = stub.Reporting(metadata=((codec.SESSION_KEY, b.session),))
    await call_a.write(encode_touched([(0, 16384)], seq=1))
    await _notice(call_a)
    # b's 60 MiB: 16 MiB of a's go to swap, which is then full; a scores 64 MiB (48
    # resident, 16 swapped) against b's 60: a is killed
    await call_b.write(encode_touched([(0, 15360)], seq=1))
    n = await _notice(call_b)
    assert n.touch_seq == 1 and n.minor == 15360
    with pytest.raises(grpc.aio.AioRpcError) as e:
        while True:
            await call_a.read()
    assert e.value.code() == grpc.StatusCode.ABORTED
    assert e.value.details() == (
        "killed by the host's OOM killer (oom_badness 16384 pages: 12288 resident, 4096 swapped)"
    )
    assert a.session not in server.device.table.sessions
    assert any(
        line.startswith("session of guest a ended (killed by the host's OOM killer")
        for line in lines
    )
    stats = codec.decode_host_stats(await stub.Stats(codec.encode_stats_request(), timeout=5))
    assert stats.oom_kills == 1 and stats.swap_used_bytes == 0
    assert stats.resident_bytes == 60 * MIB
    # A later call of the killed session (a poll that was out, say) is told the same,
    # not "unknown session": told that, its guest negotiated again and was killed again.
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Stats(codec.encode_stats_request(a.session, self_only=True), timeout=5)
    assert e.value.code() == grpc.StatusCode.ABORTED
    assert e.value.details().startswith("killed by the host's OOM killer")
    call_b.cancel()


async def test_a_guest_bigger_than_memory_and_swap_is_refused(make_host: MakeHost) -> None:
    server, stub, _ = await make_host(
        host_memory_bytes=96 * MIB, swap_bytes=0, vmm_overhead_bytes=4 * MIB
    )
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await _negotiate(stub, "big", ram=128 * MIB)
    # Final (it never fits this host): the guest stops at once instead of retrying.
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.details() == (
        "guest RAM 128 MiB + VMM overhead 4 MiB exceeds the host's memory 96 MiB + swap 0 MiB"
    )
    assert server.device.metrics.turned_away["too_big"] == 1


async def test_an_older_guest_is_counted_never_swapped_and_sent_no_notice(
    make_host: MakeHost,
) -> None:
    server, stub, _ = await make_host(vmm_overhead_bytes=2 * MIB)
    old = await _negotiate(stub, "old", offer=False)
    new = await _negotiate(stub, "new")
    call_old = stub.Reporting(metadata=((codec.SESSION_KEY, old.session),))
    call_new = stub.Reporting(metadata=((codec.SESSION_KEY, new.session),))
    await call_old.write(encode_touched([(0, 16384)]))  # oldest faults, unswappable
    await call_new.write(encode_touched([(0, 16384)], seq=1))
    n = await _notice(call_new)
    # 4 MiB of overhead + 128 MiB on 96: new's own oldest 36 MiB go
    assert n.evicted == [(0, 9216)]
    await call_old.write(encode_chain(1, [(0, 9)]))
    used = codec.decode_used(
        cast(codec.Used, await call_old.read())
    )  # the chain's answer, no Notice first
    assert isinstance(used, codec.UsedMsg) and used.id == 1
    m = server.device.backend.model
    assert m is not None and m.used == 96 * MIB // 4096 - CHUNK  # less the chain's 2 MiB
    stats = codec.decode_host_stats(await stub.Stats(codec.encode_stats_request(), timeout=5))
    g = {x.guest_id: x for x in stats.guests}
    assert g["old"].swapped_bytes == 0 and g["new"].swapped_bytes == 36 * MIB
    assert stats.vmm_overhead_bytes == 2 * MIB
    call_old.cancel()
    call_new.cancel()


def test_the_listening_line_names_host_memory_and_swap() -> None:
    line = _listening_line(_cfg(host_memory_bytes=15 << 30, swap_bytes=4 << 30), "a:1")
    assert "host memory 15.0 GiB, swap 4.0 GiB, VMM overhead 0 B" in line
    assert "memory limit none" in _listening_line(HostConfig(), "a:1")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"swap_bytes": 1 << 30}, "--swap needs --host-memory (swap for which memory?)"),
        (
            {"host_memory_bytes": 1 << 30, "swap_bytes": 65 << 30},
            "--swap 65.0 GiB: more than 64 times --host-memory 1.0 GiB (a units slip?)",
        ),
        (
            {"host_memory_bytes": 1 << 30, "capacity_bytes": 1 << 30},
            "give --host-memory (swap, OOM killer) or --memory-limit (a hard limit), not both",
        ),
        ({"host_memory_bytes": 0}, "--host-memory 0: must be at least 1"),
        ({"swap_bytes": -1}, "--swap -1: must be at least 0"),
        ({"swap_in_cost": -1.0}, "--swap-in-cost -1: must be 0..1"),
        ({"vmm_overhead_bytes": -4096}, "--vmm-overhead -4096: must be at least 0"),
    ],
)
def test_bad_host_memory_settings_are_one_line(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        HostConfig(**kw)  # type: ignore[arg-type]
    assert str(e.value) == message


def test_off_by_default() -> None:
    cfg = HostConfig()
    assert cfg.host_memory_bytes is None and cfg.swap_bytes == 0
    server = HostServer(cfg)
    assert server.backend.model is None
