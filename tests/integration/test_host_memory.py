"""A real `pagehint host --host-memory` process: its flags, its listening line, and
the OOM killer ending a guest's stream ABORTED, seen by clients that speak the wire
directly (the guest's side of the model is tested with the guest)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

import grpc
import grpc.aio

from tests.integration.procs import Procs, run_cli, wait_until
from tests.wire import encode_touched
from virtqueue import codec
from virtqueue import features as F

MIB = 1 << 20


async def _two_guests_one_killed(addr: str) -> tuple[grpc.aio.AioRpcError, codec.HostFigures]:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = codec.aio_stub(channel)
        calls = []
        for gid, pages in (("a", 16384), ("b", 15360)):
            n = codec.Negotiation(gid, 64 * MIB, 4096, F.mask(F.REPORTING), 0, "", True)
            acc = codec.decode_accepted(await stub.Negotiate(codec.encode_negotiate(n), timeout=5))
            assert acc.host_memory
            call = stub.Reporting(metadata=((codec.SESSION_KEY, acc.session),))
            await call.write(encode_touched([(0, pages)], seq=1))
            got = codec.decode_used(cast(codec.Used, await call.read()))
            assert isinstance(got, codec.NoticeMsg) and got.touch_seq == 1
            calls.append(call)
        try:
            while True:
                await calls[0].read()
        except grpc.aio.AioRpcError as e:
            error = e
        stats = codec.decode_host_stats(await stub.Stats(codec.encode_stats_request(), timeout=5))
        calls[1].cancel()
        return error, stats


def test_a_host_with_memory_and_swap_kills_the_largest_guest(procs: Procs) -> None:
    addr, _ = procs.host("--host-memory", "96MiB", "--swap", "16MiB", "--vmm-overhead", "0")
    log = "host-0"
    wait_until(lambda: "listening on" in procs.group.log_text(log), 10, "the listening line")
    assert "host memory 96.0 MiB, swap 16.0 MiB, VMM overhead 0 B" in procs.group.log_text(log)
    error, stats = asyncio.run(_two_guests_one_killed(addr))
    assert error.code() == grpc.StatusCode.ABORTED
    assert (error.details() or "").startswith("killed by the host's OOM killer (oom_badness 16384")
    assert stats.oom_kills == 1 and [g.guest_id for g in stats.guests] == ["b"]
    assert stats.host_memory_bytes == 96 * MIB and stats.swap_used_bytes == 0
    text = procs.group.log_text(log)
    assert "session of guest a ended (killed by the host's OOM killer" in text


def test_bad_host_memory_flags_are_one_line_and_exit_2() -> None:
    for args, needle in (
        (["--swap", "1GiB"], "--swap needs --host-memory"),
        (["--host-memory", "1GiB", "--swap", "1TiB"], "more than 64 times --host-memory"),
        (["--host-memory", "1GiB", "--backend", "shm", "--swap-dir", "/"], "--swap-dir needs"),
        (["--host-memory", "1GiB", "--memory-limit", "1GiB"], "not both"),
        (["--host-memory", "lots"], "--host-memory"),
        (["--host-memory", "1GiB", "--swap-in-cost", "-1"], "--swap-in-cost"),
        (["--host-memory", "1GiB", "--vmm-overhead", "-5MiB"], "--vmm-overhead"),
    ):
        r = run_cli(["host", "--listen", "127.0.0.1:0", *args])
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, r.stderr)


MEMHOG = Path(__file__).resolve().parents[2] / "guest" / "workloads" / "scenarios" / "memhog.toml"


def test_a_guest_past_host_memory_waits_for_the_writeback_it_forced(procs: Procs) -> None:
    # memhog touches 256 MiB on a host with 200: 56 MiB (28 chunks, 14,336 pages) of
    # the guest's own oldest frames go to swap, 20 µs a page, on its bill
    addr, _ = procs.host(
        "--host-memory", "200MiB", "--swap", "400MiB", "--vmm-overhead", "0",
        "--swap-out-cost", "20e-6",
    )  # fmt: skip
    g = procs.guest("--host", addr, "--ram", "512MiB", "--scenario", str(MEMHOG), "--duration", "4")
    s = procs.finish(g)
    assert s["minor_faults"] == 65536 and s["major_faults"] == 0 and not s["oom_killed"]
    assert 14336 * 20e-6 - 0.01 <= s["fault_wait_seconds"] < 1.0, s
    text = procs.group.log_text("host-0")
    assert "guest guest negotiated: 512 MiB, features STATS_VQ,REPORTING, host memory model" in text


async def _killed_by_its_own_touch(addr: str) -> tuple[grpc.aio.AioRpcError, grpc.aio.AioRpcError]:
    """Two guests; the second's own touches push the host past memory and swap, and
    it is the largest: its stream must end ABORTED with the reason, and a
    negotiation naming that session must be told the same (not let back in)."""
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = codec.aio_stub(channel)
        calls, sessions = [], []
        for gid, pages in (("small", 4096), ("big", 16384)):
            n = codec.Negotiation(gid, 64 * MIB, 4096, F.mask(F.REPORTING), 0, "", True)
            acc = codec.decode_accepted(await stub.Negotiate(codec.encode_negotiate(n), timeout=5))
            call = stub.Reporting(metadata=((codec.SESSION_KEY, acc.session),))
            for i, p in enumerate(range(0, pages, 512)):
                if call.done():
                    break  # the host killed this guest mid-touch: its read says why
                try:
                    await call.write(encode_touched([(p, 512)], seq=i + 1))
                except Exception:  # grpc's ExecuteBatchError: the stream ended meanwhile
                    break
            calls.append(call)
            sessions.append(acc.session)
        try:
            while True:
                await asyncio.wait_for(calls[1].read(), 10)
        except grpc.aio.AioRpcError as e:
            stream_error = e
        again = codec.Negotiation("big", 64 * MIB, 4096, F.mask(F.REPORTING), 0, sessions[1], True)
        try:
            await stub.Negotiate(codec.encode_negotiate(again), timeout=5)
            raise AssertionError("a killed session's guest was let back in")
        except grpc.aio.AioRpcError as e:
            negotiate_error = e
        calls[0].cancel()
        return stream_error, negotiate_error


def test_a_guest_killed_by_its_own_touch_is_told_and_not_let_back(procs: Procs) -> None:
    addr, _ = procs.host("--host-memory", "48MiB", "--swap", "16MiB", "--vmm-overhead", "0")
    stream_error, negotiate_error = asyncio.run(_killed_by_its_own_touch(addr))
    for e in (stream_error, negotiate_error):
        assert e.code() == grpc.StatusCode.ABORTED, (e.code(), e.details())
        assert (e.details() or "").startswith("killed by the host's OOM killer")
