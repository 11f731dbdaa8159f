"""The yardstick for the wire: a bare grpc.aio bidi stream with pagehint's payload.

The server answers every chain with a ``Used`` naming its id and nothing else:
no session, no checks, no discard, no bookkeeping. The client writes chains of
the same 32 ranges pagehint's guest sends and reads the answers, with one or
eight outstanding. What pagehint costs on top of this is what its own code adds.

    python -m bench.reference.bare_grpc serve --ready-file F   # the server
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import uvloop

from virtqueue.v1 import balloon_pb2 as pb
from virtqueue.v1 import balloon_pb2_grpc as pb_grpc


class BareBalloon(pb_grpc.BalloonServicer):  # type: ignore[misc]
    async def Reporting(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for msg in request_iterator:
            yield pb.Used(id=msg.chain.id, discarded_pages=len(msg.chain.pfn))


async def serve(ready_file: Path) -> None:
    server = grpc.aio.server()
    pb_grpc.add_BalloonServicer_to_server(BareBalloon(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ready_file.write_text(f"127.0.0.1:{port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


class BareClient:
    """One stream; ``report`` sends a chain and waits for its answer (a future per id)."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = pb_grpc.BalloonStub(self.channel)
        self.call: Any = None
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.next_id = 0
        self.reader: asyncio.Task[None] | None = None
        # gRPC allows one write at a time on a call.
        self.write_lock = asyncio.Lock()

    async def start(self) -> None:
        self.call = self.stub.Reporting()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            msg = await self.call.read()
            if msg is grpc.aio.EOF:
                return
            self.waiting.pop(msg.id).set_result(msg)

    async def report(self, pfns: list[int], orders: list[int]) -> None:
        self.next_id += 1
        chain_id = self.next_id
        fut = asyncio.get_running_loop().create_future()
        self.waiting[chain_id] = fut
        async with self.write_lock:
            await self.call.write(
                pb.GuestMessage(chain=pb.Chain(id=chain_id, pfn=pfns, order=orders))
            )
        await fut

    async def stop(self) -> None:
        await self.call.done_writing()
        if self.reader is not None:
            with contextlib.suppress(Exception):
                await self.reader
        await self.channel.close()


def main() -> None:
    ap = argparse.ArgumentParser(prog="bare_grpc")
    ap.add_argument("mode", choices=["serve"])
    ap.add_argument("--ready-file", type=Path, required=True)
    args = ap.parse_args()
    uvloop.run(serve(args.ready_file))


if __name__ == "__main__":
    main()
