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


# Each kind of handler: the attribute that holds its behaviour, how to
# rebuild a handler of that kind, and how its response is wrapped.
_KINDS: tuple[tuple[str, Callable[..., grpc.RpcMethodHandler], Callable[..., Any]], ...] = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, _unary_response),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, _unary_response),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, _stream_response),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, _stream_response),
)


def wrap_handler(handler: grpc.RpcMethodHandler, around: Around) -> grpc.RpcMethodHandler:
    """The same method handler, with `around` run at the start and end of every call."""
    for attribute, rebuild, wrap in _KINDS:
        inner = getattr(handler, attribute)
        if inner is not None:
            return rebuild(
                wrap(inner, around),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    raise ValueError("the method handler has no behaviour to wrap")
