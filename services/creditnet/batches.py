"""A provider's batch of records as it comes off the wire, read record by record.

`SubmitRecordsRequest` is one repeated field, `records`. Parsed whole, one
record that does not decode (a text field that is not UTF-8, a broken
length) fails the whole message, and with it every valid record of the
batch. Read here from the wire format instead, each record is decoded on its
own: the ones that fail are rejected by position like any other invalid
record, and the rest are stored as usual. The number of records is counted
from their tags before any of them is decoded, so an oversized batch costs
no decoding at all.

Each record's bytes are kept exactly as they came: the provider's signed
manifest (`manifest`, field 2) commits to them, and the node hashes, stores and
discloses those bytes, never a re-serialisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from google.protobuf.message import DecodeError

from creditnet.errors import Error
from creditnet.v2 import envelope_pb2, node_pb2, records_pb2

__all__ = [
    "MAX_BATCH_RECORDS",
    "Batch",
    "MalformedBatch",
    "read_batch",
]

# Records in one SubmitRecords message; more is refused (provider.batch_size)
# before any is read. The provider CLI's largest --batch-size.
MAX_BATCH_RECORDS: Final = 10_000
_RECORDS_FIELD: Final = 1
_MANIFEST_FIELD: Final = 2
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class MalformedBatch(Error, ValueError):
    """The message around the records is not a SubmitRecordsRequest."""


@dataclass(slots=True)
class Batch:
    """One SubmitRecords message: its records in order, as bytes until decoded."""

    # Each record's bytes, as read off the wire (not yet decoded)...
    raw: list[bytes] = field(default_factory=list)
    # ...or the records of a request that was parsed whole.
    parsed: list[records_pb2.CreditRecord] | None = None
    # Records the message holds; beyond MAX_BATCH_RECORDS none was kept.
    count: int = 0
    # The provider-signed RecordBatch manifest, None when the message has none.
    manifest: envelope_pb2.SignedEnvelope | None = None

    @property
    def oversized(self) -> bool:
        return self.count > MAX_BATCH_RECORDS

    def decode(self) -> list[records_pb2.CreditRecord | None]:
        """The records in order, None where one does not decode.

        CPU work in proportion to the batch: the node calls it off its event loop.
        """
        if self.parsed is not None:
            return list(self.parsed)
        out: list[records_pb2.CreditRecord | None] = []
        for data in self.raw:
            try:
                out.append(records_pb2.CreditRecord.FromString(data))
            except DecodeError:
                out.append(None)
        return out

    def records_bytes(self) -> list[bytes]:
        """Each record's bytes as received (re-encoded only for a request parsed whole)."""
        if self.parsed is not None:
            # Only a server registered without `read_batch` gets here; bytes
            # that differ from the signed ones fail the root check (batch.root).
            return [r.SerializeToString() for r in self.parsed]
        return self.raw

    @classmethod
    def of(cls, request: node_pb2.SubmitRecordsRequest | Batch) -> Batch:
        """A batch from an already parsed request too (a server registered without `read_batch`)."""
        if isinstance(request, Batch):
            return request
        manifest = request.manifest if request.HasField("manifest") else None
        return cls(parsed=list(request.records), count=len(request.records), manifest=manifest)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise MalformedBatch("a varint runs past the message or past 64 bits")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each top-level field; groups are not accepted."""
    out: list[tuple[int, int, int, int]] = []
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise MalformedBatch("field number 0")
        start = pos
        if wire == _VARINT:
            _, pos = _varint(data, pos)
        elif wire == _FIXED64:
            pos += 8
        elif wire == _FIXED32:
            pos += 4
        elif wire == _LENGTH:
            size, start = _varint(data, pos)
            pos = start + size
        else:
            # Groups (deprecated) nest without a length; no client sends them here.
            raise MalformedBatch(f"wire type {wire}")
        if pos > len(data):
            raise MalformedBatch("a field runs past the message")
        out.append((number, wire, start, pos))
    return out


def read_batch(raw: bytes) -> Batch:
    """The batch in the bytes of a SubmitRecordsRequest; MalformedBatch if they are not one."""
    records: list[tuple[int, int]] = []
    manifest: tuple[int, int] | None = None
    for number, wire, start, end in _fields(raw):
        if number not in (_RECORDS_FIELD, _MANIFEST_FIELD):
            continue  # unknown fields, as protobuf parsers skip them
        if wire != _LENGTH:
            raise MalformedBatch("records or manifest with another wire type")
        if number == _RECORDS_FIELD:
            records.append((start, end))
        else:
            # A repeated singular message field: protobuf merges; refused
            # here, as a manifest is signed whole.
            if manifest is not None:
                raise MalformedBatch("more than one manifest")
            manifest = (start, end)
    batch = Batch(count=len(records))
    if manifest is not None:
        try:
            batch.manifest = envelope_pb2.SignedEnvelope.FromString(raw[manifest[0] : manifest[1]])
        except DecodeError:
            raise MalformedBatch("the manifest is not a SignedEnvelope") from None
    if not batch.oversized:
        # Only sliced here, in the deserializer on the event loop; decoding
        # is left for the node's worker thread.
        batch.raw = [raw[start:end] for start, end in records]
    return batch
