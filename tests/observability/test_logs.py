"""JSON and text log lines: the fields, the call's query and trace, nothing else."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import uuid
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from creditnet.observability import configure_logging, query_scope
from creditnet.observability.logs import (
    CallContextFilter,
    JsonFormatter,
    LogSetupError,
    TextFormatter,
    parse_log_format,
)
from creditnet.querycontext import bind_query_id
from creditnet.settings import LogFormat

QUERY = str(uuid.uuid4())


@pytest.fixture
def lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing JSON to a buffer through the same handler set-up as configure_logging."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter({"service": "node", "city": "340100"}))
    handler.addFilter(CallContextFilter())
    logger = logging.getLogger(f"tests.observability.logs.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def records(stream: io.StringIO) -> list[dict[str, object]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.split("\n")[:-1]]


def test_a_json_line_has_time_level_logger_message(lines: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = lines
    logger.warning("node %s has %d calls pending", "合肥", 3)
    (rec,) = records(stream)
    assert rec.keys() == {"time", "level", "logger", "message", "service", "city"}
    assert rec["level"] == "WARNING"
    assert rec["logger"] == logger.name
    assert rec["message"] == "node 合肥 has 3 calls pending"
    assert rec["service"] == "node" and rec["city"] == "340100"
    stamp = str(rec["time"])
    assert stamp.endswith("Z")
    parsed = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.UTC) - parsed).total_seconds()) < 3600


def test_inside_a_call_the_line_names_its_query_and_trace(lines: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = lines
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("call") as span:
        with query_scope(QUERY, verified=False):
            logger.info("claimed")
            bind_query_id(QUERY.upper())  # verified now, canonical form
            logger.info("verified")
        logger.info("no query")
    logger.info("outside")
    claimed, verified, no_query, outside = records(stream)
    ctx = span.get_span_context()
    trace_id, span_id = format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
    assert claimed["claimed_query_id"] == QUERY and "query_id" not in claimed
    assert verified["query_id"] == QUERY and "claimed_query_id" not in verified
    for rec in (claimed, verified, no_query):
        assert rec["trace_id"] == trace_id and rec["span_id"] == span_id
    assert "query_id" not in no_query and "claimed_query_id" not in no_query
    assert not {"query_id", "claimed_query_id", "trace_id", "span_id"} & outside.keys()


def test_one_line_per_record_and_no_extra_fields(lines: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = lines
    logger.info("first\nsecond\u2028third", extra={"uscc": "91340104JURQ283FQ8", "password": "hunter2"})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed")
    text = stream.getvalue()
    assert len(text.splitlines()) == 2  # newlines and U+2028 stay inside their JSON strings
    first, failed = records(stream)
    assert first["message"] == "first\nsecond\u2028third"
    assert "91340104JURQ283FQ8" not in text and "hunter2" not in text
    assert "uscc" not in first and "password" not in first
    assert failed["level"] == "ERROR"
    exception = str(failed["exception"])
    assert exception.startswith("Traceback") and "RuntimeError: boom" in exception


def test_the_text_format_appends_the_call_context() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    handler.addFilter(CallContextFilter())
    logger = logging.getLogger("tests.observability.text")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("plain")
        with query_scope(QUERY):
            logger.warning("in a query")
    finally:
        logger.removeHandler(handler)
    plain, in_query = stream.getvalue().splitlines()
    assert plain.endswith(" WARNING tests.observability.text: plain")
    assert in_query.endswith(f"WARNING tests.observability.text: in a query [query={QUERY}]")


def test_configure_logging_installs_the_format_on_the_root_logger() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        handler = configure_logging(LogFormat.JSON, logging.WARNING, stream=stream)
        assert root.handlers == [handler]
        logging.getLogger("creditnet.test").info("below the level")
        logging.getLogger("creditnet.test").warning("shown")
        (line,) = stream.getvalue().splitlines()
        assert json.loads(line)["message"] == "shown"
        text_stream = io.StringIO()
        configure_logging("text", logging.INFO, stream=text_stream)
        logging.getLogger("creditnet.test").info("as text")
        assert text_stream.getvalue().rstrip().endswith("INFO creditnet.test: as text")
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved_handlers:
            root.addHandler(h)
        root.setLevel(saved_level)


def test_bad_formats_and_levels_are_refused_and_change_nothing() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    with pytest.raises(LogSetupError, match="json or text, got 'yaml'"):
        configure_logging("yaml")
    with pytest.raises(LogSetupError, match="unknown log level 7"):
        configure_logging("json", 7)
    with pytest.raises(LogSetupError, match="may not be named message"):
        configure_logging("json", static={"message": "x"})
    assert root.handlers == before
    assert isinstance(LogSetupError("x"), ValueError)
    assert parse_log_format(" JSON ") == "json"
    assert parse_log_format(LogFormat.TEXT) == "text"
