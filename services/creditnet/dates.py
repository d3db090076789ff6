"""Conversions between Python dates/times and the protobuf Date and Timestamp."""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp

from creditnet.v2 import common_pb2

__all__ = [
    "UTC",
    "date_from_proto",
    "date_to_proto",
    "ts_from_proto",
    "ts_to_proto",
    "utcnow",
]

UTC = dt.UTC


def date_to_proto(value: dt.date) -> common_pb2.Date:
    return common_pb2.Date(year=value.year, month=value.month, day=value.day)


def date_from_proto(value: common_pb2.Date) -> dt.date:
    """Raises ValueError for a missing or impossible date."""
    return dt.date(value.year, value.month, value.day)


def ts_to_proto(value: dt.datetime) -> Timestamp:
    if value.tzinfo is None:
        raise ValueError("naive datetimes are ambiguous; pass an aware datetime")
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def ts_from_proto(value: Timestamp) -> dt.datetime:
    return value.ToDatetime(tzinfo=UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)
