"""A host that names any RAM file it likes: what a guest must not believe.

    python -m tests.integration.lying_host PATH_FILE READY_FILE

Answers every Negotiate as an shm host would, except that the RAM file it names
is whatever PATH_FILE holds at that moment (a hostile host, or anyone in the
middle of a plain-text link, can say anything); answers every chain DONE and
discards nothing. Writes its address to READY_FILE once it serves.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from virtqueue import codec
from virtqueue import features as F


class LyingHost:
    def __init__(self, path_file: Path) -> None:
        self.path_file = path_file

    async def Negotiate(
        self, request: codec.NegotiateRequest, context: codec.Context
    ) -> codec.NegotiateReply:
        return codec.encode_accepted(
            codec.Accepted(
                features=F.mask(F.REPORTING),
                queue_size=64,
                max_chain_ranges=512,
                session="5e551011" * 4,
                backend="shm",
                shm_path=self.path_file.read_text().strip(),
                discard="dontneed",
                instance="liar",
                session_timeout_ms=30_000,
            )
        )

    async def Reporting(
        self, request_iterator: AsyncIterator[codec.GuestMessage], context: codec.Context
    ) -> AsyncIterator[codec.Used]:
        async for msg in request_iterator:
            m = codec.decode_guest_message(msg)
            if isinstance(m, codec.ChainMsg):
                yield codec.encode_used(codec.UsedMsg(m.id))

    async def Stats(self, request: codec.StatsRequest, context: codec.Context) -> codec.HostStats:
        return codec.HostStats(backend="shm")

    async def Close(self, request: codec.CloseRequest, context: codec.Context) -> codec.CloseReply:
        return codec.close_reply()

    async def Balloon(
        self, request: codec.BalloonRequest, context: codec.Context
    ) -> codec.BalloonStatus:
        return codec.BalloonStatus()

    async def Hint(self, request: codec.HintRequest, context: codec.Context) -> codec.HintStatus:
        return codec.HintStatus()

    async def Snapshot(
        self, request: codec.SnapshotRequest, context: codec.Context
    ) -> codec.SnapshotReport:
        return codec.SnapshotReport()


async def main(path_file: Path, ready: Path) -> None:
    server = grpc.aio.server()
    codec.add_servicer(LyingHost(path_file), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(f"127.0.0.1:{port}")
    tmp.rename(ready)  # whole, or not there at all
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
