"""Open calls per client address: one client cannot hold the host's connections.

gRPC's connection cap (``--max-connections``) counts every client together, and
its idle timeout closes only connections with no call open. A client that keeps
one call open on each connection (a Health ``Watch`` never ends and needs no
token) could so hold every connection the host allows, and shut every guest out.
This interceptor counts the calls each client address has open, across all its
connections, and refuses one past ``--max-calls-per-peer`` with
RESOURCE_EXHAUSTED before it runs: a client then holds at most that many
connections busy, however many it opens, and the rest are closed idle.

An honest guest holds one call (its Reporting stream) and, now and then, a short
unary call; the default leaves room for twice the per-address session quota.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from host.peers import peer_address

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
Refused = Callable[[str, str], None]  # (address, method) -> count and log it


class CallsPerPeer(grpc.aio.ServerInterceptor):
    def __init__(self, limit: int, refused: Refused) -> None:
        self.limit = limit
        self.refused = refused
        self.open: Counter[str] = Counter()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        details = handler_call_details
        handler = await continuation(details)
        if handler is None:
            return handler
        method = str(details.method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(handler.stream_stream, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _enter(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> str:
        address = peer_address(str(context.peer() or ""))
        if self.open[address] >= self.limit:
            self.refused(address, method)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this client's address has {self.limit} calls open, the host's limit "
                "per address (--max-calls-per-peer)",
            )
        self.open[address] += 1
        return address

    def _leave(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]

    def _unary(self, behaviour: Any, method: str) -> Any:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            address = await self._enter(context, method)
            try:
                return await behaviour(request, context)
            finally:
                self._leave(address)

        return call

    def _streaming(self, behaviour: Any, method: str) -> Any:
        if inspect.isasyncgenfunction(behaviour):

            async def gen(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                address = await self._enter(context, method)
                try:
                    stream: AsyncIterator[Any] = behaviour(request, context)
                    async for response in stream:
                        yield response
                finally:
                    self._leave(address)

            return gen
        # A handler that writes with context.write() and returns when done.
        return self._unary(behaviour, method)
