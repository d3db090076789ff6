"""Logs as one JSON object per line (or plain text), naming the query and trace of each call.

``CREDITNET_LOG_FORMAT=json`` gives lines like::

    {"time":"2026-03-01T08:00:00.123Z","level":"INFO","logger":"creditnet.node.service",
     "message":"...","query_id":"6f1c…","trace_id":"4bf9…","span_id":"00f0…"}

(on one line). ``query_id`` is an id this server verified; ``claimed_query_id``
one the caller sent that is not verified (yet). The trace and span ids are
OpenTelemetry's, so a log line leads to its trace and the other servers'
lines of the same federated query.

Only those fields are written: a record's ``extra`` attributes are not, so
nothing reaches the logs that the message itself does not say. Messages
must not quote credit data or secrets; the code that logs is responsible
for that, this module for adding nothing else.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import sys
from collections.abc import Mapping
from typing import IO, Any

from opentelemetry import trace

from creditnet.errors import Error
from creditnet.querycontext import current_query

__all__ = [
    "CallContextFilter",
    "JsonFormatter",
    "LogSetupError",
    "TextFormatter",
    "configure_logging",
    "parse_log_format",
]

LOG_FORMATS = ("json", "text")
CONTEXT_FIELDS = ("query_id", "claimed_query_id", "trace_id", "span_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogSetupError(Error, ValueError):
    """A log format or level that does not exist."""


def _call_fields() -> dict[str, str]:
    """The query and trace of the code running now (empty outside any call)."""
    fields: dict[str, str] = {}
    query = current_query()
    if query is not None:
        fields["query_id" if query.verified else "claimed_query_id"] = query.query_id
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        fields["trace_id"] = format(span.trace_id, "032x")
        fields["span_id"] = format(span.span_id, "016x")
    return fields


class CallContextFilter(logging.Filter):
    """Stamp each record with its call's query and trace while still in the caller's context.

    Attached to the handler, so it runs in the task that logged, before any
    formatter (which might run elsewhere) reads the record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _call_fields()
        for key in CONTEXT_FIELDS:
            setattr(record, key, fields.get(key))
        return True


def _record_fields(record: logging.LogRecord) -> dict[str, str]:
    if hasattr(record, CONTEXT_FIELDS[0]):
        return {k: v for k in CONTEXT_FIELDS if (v := getattr(record, k, None))}
    # Not stamped by the filter (a formatter used on its own): it is the caller's context.
    return _call_fields()


def _iso_time(created: float) -> str:
    stamp = dt.datetime.fromtimestamp(created, dt.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line; `static` fields (e.g. the city) on every line."""

    def __init__(self, static: Mapping[str, str] | None = None) -> None:
        super().__init__()
        reserved = {"time", "level", "logger", "message", "exception", "stack", *CONTEXT_FIELDS}
        clash = reserved.intersection(static or {})
        if clash:
            raise LogSetupError(f"static log fields may not be named {', '.join(sorted(clash))}")
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(self.static)
        out.update(_record_fields(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        text = json.dumps(out, ensure_ascii=False, separators=(",", ":"), default=str)
        # JSON allows these raw, but line-splitting readers (Python's
        # str.splitlines among them) would cut the object in two.
        return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


class TextFormatter(logging.Formatter):
    """The classic line, with ``[query=… trace=…]`` appended inside a call."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _record_fields(record)
        if not fields:
            return line
        parts = []
        if "query_id" in fields:
            parts.append(f"query={fields['query_id']}")
        if "claimed_query_id" in fields:
            parts.append(f"claimed-query={fields['claimed_query_id']}")
        if "trace_id" in fields:
            parts.append(f"trace={fields['trace_id']}")
        # Keep a traceback's lines after the context, on the first line.
        first, sep, rest = line.partition("\n")
        return f"{first} [{' '.join(parts)}]{sep}{rest}"


def parse_log_format(fmt: object) -> str:
    """``json`` or ``text``, from either word or an enum whose value is one (settings.LogFormat)."""
    value = fmt.value if isinstance(fmt, enum.Enum) else fmt
    if isinstance(value, str) and value.strip().lower() in LOG_FORMATS:
        return value.strip().lower()
    raise LogSetupError(f"log format must be json or text, got {value!r}")


def _make_formatter(fmt: object, static: Mapping[str, str] | None = None) -> logging.Formatter:
    name = parse_log_format(fmt)
    return JsonFormatter(static) if name == "json" else TextFormatter()


def configure_logging(
    fmt: object = "text",
    level: int = logging.INFO,
    *,
    stream: IO[str] | None = None,
    static: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Send every log record to `stream` (default stderr) in `fmt`, replacing the root's handlers.

    `static` fields are added to every JSON line (e.g. ``{"service": "node", "city": "340100"}``).
    Returns the handler installed.
    """
    formatter = _make_formatter(fmt, static)
    known = isinstance(level, int) and not logging.getLevelName(level).startswith("Level ")
    if isinstance(level, bool) or not known:
        raise LogSetupError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(CallContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        # Removed, not closed: a handler someone else holds (a test's log
        # capture) stays usable by its owner.
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
