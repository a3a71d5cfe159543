"""Records and their wire encoding.

A record is what a source sends: a payload (``bytes``, ``str`` or a
JSON-serialisable ``dict``/``list``), with an optional key, attributes and
event time. :class:`Record` names all of them; ``bytes``, ``str`` and
``dict`` values may also be passed to ``send`` directly as payloads.

Records are encoded **once**, when they are handed to ``send``: into the
protobuf bytes of one ``Batch.records`` entry (field tag, length and the
``Record`` message). The held window keeps those bytes; a batch is the
concatenation of its records' bytes behind a few bytes of header, so sending
and resending never build protobuf objects per record. ``tests/test_records.py``
checks that the encoding parses back, with the generated stubs, into the same
``Record``.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, Union

__all__ = ["Record", "RecordLike", "encode", "encode_many", "record_size", "batch_message", "decode_record"]


@dataclass(frozen=True, slots=True)
class Record:
    """One record with everything the protocol carries.

    Attributes:
        payload: The content: bytes as they are, ``str`` as UTF-8, anything
            else (dict, list, number…) as compact JSON.
        key: Optional key (bytes or str), passed to transforms and sinks.
        attributes: Free-form string metadata.
        event_time: When the event happened: a timezone-aware
            :class:`datetime.datetime` (a naive one is taken as UTC) or
            milliseconds since the Unix epoch; ``None`` when unknown.
    """

    payload: Any
    key: bytes | str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    event_time: _dt.datetime | int | None = None


#: What ``send`` accepts: a :class:`Record`, or a payload alone.
RecordLike = Union[Record, bytes, bytearray, memoryview, str, Mapping[str, Any], list]

_TAG_RECORDS = b"\x12"  # Batch.records, field 2, length-delimited


def _varint(n: int) -> bytes:
    """The protobuf base-128 varint of ``n`` (``n`` below 0 as 64-bit two's complement)."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


varint = _varint

# Prefix of a payload-only record of payload length L (L below _FAST):
# Batch.records tag, the Record's length, Record.payload tag, L.
_FAST = 1 << 14
_PREFIX: list[bytes] = []
for _n in range(_FAST):
    _inner = b"\x12" + _varint(_n) if _n else b""  # proto3 leaves an empty payload out
    _PREFIX.append(_TAG_RECORDS + _varint(len(_inner) + _n) + _inner)
del _n, _inner


# One encoder for all records: `json.dumps` with options builds a new one per call.
_stdlib_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

try:  # orjson, when installed (`pip install sluice-client[fast]`), is 5-10x faster
    import orjson as _orjson

    def _json_bytes(value: Any) -> bytes:
        """Compact UTF-8 JSON of ``value`` (orjson; the standard library for what it refuses)."""
        try:
            return _orjson.dumps(value)
        except TypeError:
            return _stdlib_json(value).encode()

except ImportError:  # pragma: no cover - depends on the environment

    def _json_bytes(value: Any) -> bytes:
        """Compact UTF-8 JSON of ``value``."""
        return _stdlib_json(value).encode()


def _payload_bytes(payload: Any) -> bytes:
    """A payload as bytes: bytes unchanged, str as UTF-8, the rest as compact JSON."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    try:
        return _json_bytes(payload)
    except (TypeError, ValueError) as e:
        raise TypeError(f"record payload is not bytes, str or JSON-serialisable: {e}") from None


def _event_time_ms(t: _dt.datetime | int | None) -> int:
    if t is None:
        return 0
    if isinstance(t, _dt.datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=_dt.timezone.utc)
        return int(t.timestamp() * 1000)
    return int(t)


def _field(tag: bytes, data: bytes) -> bytes:
    return tag + _varint(len(data)) + data


def encode(record: RecordLike) -> tuple[bytes, int]:
    """Encode one record as a ``Batch.records`` entry.

    Returns:
        The entry's bytes and the record's size as the protocol counts it
        (``len(key) + len(payload) + sum(len(name) + len(value))``, UTF-8).
    """
    if not isinstance(record, Record):
        payload = _payload_bytes(record)
        n = len(payload)
        if n < _FAST:
            return _PREFIX[n] + payload, n
        return _TAG_RECORDS + _varint(n + 1 + len(_varint(n))) + b"\x12" + _varint(n) + payload, n
    payload = _payload_bytes(record.payload)
    key = record.key.encode() if isinstance(record.key, str) else (record.key or b"")
    parts = []
    size = len(key) + len(payload)
    if key:
        parts.append(_field(b"\x0a", key))
    if payload:
        parts.append(_field(b"\x12", payload))
    for name, value in record.attributes.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"record attributes must be str to str, got {name!r}: {value!r}")
        n_b, v_b = name.encode(), value.encode()
        size += len(n_b) + len(v_b)
        entry = (_field(b"\x0a", n_b) if n_b else b"") + (_field(b"\x12", v_b) if v_b else b"")
        parts.append(_field(b"\x1a", entry))
    ms = _event_time_ms(record.event_time)
    if ms:
        parts.append(b"\x20" + _varint(ms))
    body = b"".join(parts)
    return _TAG_RECORDS + _varint(len(body)) + body, size


def encode_many(records: "Sequence[RecordLike]") -> tuple[list[bytes], list[int]]:
    """Encode many records (see :func:`encode`); a fast path for plain bytes payloads.

    Returns:
        The entries' bytes and the records' sizes, in order.
    """
    recs: Sequence[Any] = records  # narrowed by the type checks below
    prefix = _PREFIX
    fast = _FAST
    try:
        # All small bytes payloads: one list comprehension each.
        sizes = [len(r) for r in recs if type(r) is bytes]
        if len(sizes) == len(recs) and (not sizes or max(sizes) < fast):
            return [prefix[len(r)] + r for r in recs], sizes
    except TypeError:
        pass
    encs: list[bytes] = []
    sizes = []
    append_e, append_s = encs.append, sizes.append
    for r in recs:
        t = type(r)
        if t is str:
            r = r.encode()
            t = bytes
        elif t is dict:
            r = _payload_bytes(r)
            t = bytes
        if t is bytes and len(r) < fast:
            append_e(prefix[len(r)] + r)
            append_s(len(r))
        else:
            e, s = encode(r)
            append_e(e)
            append_s(s)
    return encs, sizes


def record_size(record: RecordLike) -> int:
    """The size of ``record`` as credits and limits count it."""
    return encode(record)[1]


def batch_message(first_seq: int, entries: list[bytes], batch_id: int = 0) -> bytes:
    """The encoded ``SourceMessage{batch: Batch{first_seq, records, batch_id}}``.

    ``entries`` are :func:`encode` outputs; ``batch_id`` 0 is left out (version 1).
    """
    body = b"\x08" + _varint(first_seq) + b"".join(entries)
    if batch_id:
        body += b"\x18" + _varint(batch_id)
    return b"\x12" + _varint(len(body)) + body


def decode_record(entry: bytes) -> Record:
    """The :class:`Record` of an encoded entry (for example
    :attr:`~sluice.RecordTooLarge.entry`); the payload comes back as bytes."""
    from ._proto import ingest_pb2 as pb

    batch = pb.Batch.FromString(entry)
    r = batch.records[0]
    return Record(
        payload=r.payload,
        key=r.key or None,
        attributes=dict(r.attributes),
        event_time=r.event_time_ms or None,
    )
