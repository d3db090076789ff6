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

from creditnet.errors import InvalidArgument

__all__ = [
    "MALFORMED_RULE",
    "Deserializer",
    "Finish",
    "refuse_undecodable",
    "wrap_handler",
]

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


# --- requests that do not decode --------------------------------------------------

MALFORMED_RULE = "request.malformed"


class _Undecodable:
    """What a tolerant deserializer hands on for bytes that are not the request message."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDECODABLE"


UNDECODABLE: Any = _Undecodable()
Deserializer = Callable[[bytes], Any]


def _tolerant(deserializer: Deserializer | None) -> Deserializer:
    """`deserializer`, answering UNDECODABLE where it would raise.

    gRPC calls the deserializer before the handler, outside anything a
    handler can catch, and answers its exception UNKNOWN with the exception's
    class and text: the handler must see the failure to refuse it properly.
    """

    def read(raw: bytes) -> Any:
        if deserializer is None:
            return raw
        try:
            return deserializer(raw)
        except Exception:
            # DecodeError, a nesting deeper than the parser allows, bad UTF-8
            # in a string field: to the caller all the same.
            return UNDECODABLE

    return read


async def _refuse_undecodable(context: grpc.aio.ServicerContext) -> None:
    exc = InvalidArgument(MALFORMED_RULE, "the request is not a well-formed message of this method")
    await context.abort(exc.code, exc.reason)


async def _checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    async for request in requests:
        if request is UNDECODABLE:
            await _refuse_undecodable(context)
        yield request


def _decoded(
    inner: Callable[..., Any], streaming_requests: bool, streaming_responses: bool
) -> Callable[..., Any]:
    """`inner`, of the same kind (gRPC tells kinds apart by their functions), fed only decoded requests."""

    async def arguments(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if streaming_requests:
            return _checked(request, context)
        if request is UNDECODABLE:
            await _refuse_undecodable(context)
        return request

    if inspect.isasyncgenfunction(inner):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for item in inner(await arguments(request, context), context):
                yield item

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        result = inner(await arguments(request, context), context)
        if inspect.isawaitable(result):
            result = await result
        if streaming_responses and result is not None:
            # A handler returning its responses: written here, as gRPC
            # expects a coroutine handler of a response stream to write.
            for item in result:
                await context.write(item)
            return None
        return result

    return call


def refuse_undecodable(
    handler: grpc.RpcMethodHandler, deserializer: Deserializer | None = None
) -> grpc.RpcMethodHandler:
    """The same handler, refusing INVALID_ARGUMENT request.malformed what does not decode.

    `deserializer` replaces the handler's own (for a method that reads its
    request more leniently, e.g. record by record).
    """
    read = _tolerant(deserializer or handler.request_deserializer)
    for attribute, rebuild, _wrap in _KINDS:
        inner = getattr(handler, attribute)
        if inner is not None:
            return rebuild(
                _decoded(inner, bool(handler.request_streaming), bool(handler.response_streaming)),
                request_deserializer=read,
                response_serializer=handler.response_serializer,
            )
    raise ValueError("the method handler has no behaviour to wrap")
