"""Wrapping a gRPC method handler: work before every call and after it, whatever the call's kind.

Server interceptors of grpc.aio see a call only as its method handler; the
limits (admit or refuse) and observability (count, time, trace) both need to
run code when the call starts and when it ends, so both wrap handlers here.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

# Run when the call ends, with the exception that ended it (None: it succeeded).
Finish = Callable[[BaseException | None], None]
# Run when the call starts: may abort it (context.abort), else says how to finish.
Around = Callable[[grpc.aio.ServicerContext], Awaitable[Finish]]


def _unary_response(inner: Callable[..., Any], around: Around) -> Callable[..., Any]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        finish = await around(context)
        try:
            result = inner(request, context)
            if inspect.isawaitable(result):
                result = await result
        except BaseException as exc:
            finish(exc)
            raise
        # Before the response leaves: what finishing frees is free when the caller has it.
        finish(None)
        return result

    return call


def _stream_response(inner: Callable[..., Any], around: Around) -> Callable[..., Any]:
    # gRPC iterates an async-generator handler and awaits any other (which
    # then writes with context.write): the wrapper keeps the same kind.
    if inspect.isasyncgenfunction(inner):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            finish = await around(context)
            try:
                async for item in inner(request, context):
                    yield item
            except BaseException as exc:
                finish(exc)
                raise
            finish(None)

        return stream

    async def writer(request: Any, context: grpc.aio.ServicerContext) -> None:
        finish = await around(context)
        try:
            result = inner(request, context)
            if inspect.isawaitable(result):
                result = await result
            if result is not None:
                for item in result:
                    await context.write(item)
        except BaseException as exc:
            finish(exc)
            raise
        finish(None)

    return writer


def wrap_handler(handler: grpc.RpcMethodHandler, around: Around) -> grpc.RpcMethodHandler:
    """The same method handler, with `around` run at the start and end of every call."""
    des, ser = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _unary_response(handler.unary_unary, around), request_deserializer=des, response_serializer=ser
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _unary_response(handler.stream_unary, around), request_deserializer=des, response_serializer=ser
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _stream_response(handler.unary_stream, around), request_deserializer=des, response_serializer=ser
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _stream_response(handler.stream_stream, around), request_deserializer=des, response_serializer=ser
        )
    raise ValueError("the method handler has no behaviour to wrap")
