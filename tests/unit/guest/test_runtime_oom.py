"""A guest whose session the host's OOM killer ends: its summary says so, one line on
stderr, exit status 3 (issue 23). The host here is a stand-in gRPC server that
accepts host_memory, settles the guest's first touch batch with a delay, then ends
the stream as host/service.py does for an OOM kill (ABORTED)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from virtqueue import codec
from virtqueue import features as F

OOM_DETAIL = "killed by the host's OOM killer (oom_badness 300 pages: 200 resident, 100 swapped)"


class OomHost:
    """Negotiates host_memory; on the guest's first numbered touch batch answers a
    Notice (a major fault), then kills the session."""

    def __init__(self) -> None:
        self.offered: list[bool] = []
        self.seqs: list[int] = []

    async def Negotiate(self, request: Any, context: Any) -> Any:
        self.offered.append(request.host_memory)
        return codec.encode_accepted(
            codec.Accepted(F.mask(F.REPORTING), 64, 32, "sess", "sim", "", "free", host_memory=True)
        )

    async def Reporting(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async for m in request_iterator:
            msg = codec.decode_guest_message(m)
            if isinstance(msg, codec.TouchedMsg) and msg.seq:
                self.seqs.append(msg.seq)
                yield codec.encode_notice(codec.NoticeMsg([], msg.seq, 1000, 1, 0))
                await asyncio.sleep(0.3)
                await context.abort(grpc.StatusCode.ABORTED, OOM_DETAIL)
            elif isinstance(msg, codec.ChainMsg):
                yield codec.encode_used(codec.UsedMsg(msg.id))

    async def Stats(self, request: Any, context: Any) -> Any:
        g = codec.GuestFigures("g", 64 << 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, False, 0, 1, 8192)
        return codec.encode_host_stats(codec.HostFigures([], 0, 0, 0, 0, 0, 0, self_guest=g))

    async def Close(self, request: Any, context: Any) -> Any:
        return codec.close_reply()

    async def Balloon(self, request: Any, context: Any) -> Any:
        raise NotImplementedError  # never called here

    async def Hint(self, request: Any, context: Any) -> Any:
        raise NotImplementedError  # never called here

    async def Snapshot(self, request: Any, context: Any) -> Any:
        raise NotImplementedError  # never called here


async def test_an_oom_killed_guest_says_so_in_one_line_and_exits_3() -> None:
    server = grpc.aio.server()
    host = OomHost()
    codec.add_servicer(host, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        guest = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pagehint",
            "guest",
            "--host",
            f"127.0.0.1:{port}",
            "--id",
            "g",
            "--ram",
            "64MiB",
            "--workload",
            "memhog",
            "--duration",
            "60",
            "--json",
            "--quiet",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(guest.communicate(), 45)
    finally:
        await server.stop(None)
    assert guest.returncode == 3, err
    (line,) = err.decode().strip().splitlines()
    assert line == f"pagehint guest: {OOM_DETAIL}"
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["oom_killed"] is True
    # One major fault per Notice the host sent: one, unless a loaded machine broke
    # the first stream before the kill and the guest's next session got one too.
    assert summary["major_faults"] == len(host.seqs) >= 1 and summary["fault_wait_seconds"] > 0
    assert summary["swapped_bytes"] == 8192
    # Every session offered its touches (one, or two as above).
    assert host.offered and all(host.offered) and host.seqs[0] == 1
    assert summary["duration_s"] < 30  # it stopped, not ran its 60 s
