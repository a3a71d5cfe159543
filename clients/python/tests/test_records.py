"""The hand-written wire encoding parses back, with the generated stubs, into the same messages."""

from __future__ import annotations

import datetime as dt

import pytest

import sluice
from sluice._proto import ingest_pb2 as pb
from sluice.records import batch_message, encode, encode_many, record_size


def parse(entries: list[bytes], first_seq: int = 1, batch_id: int = 0) -> pb.Batch:
    m = pb.SourceMessage.FromString(batch_message(first_seq, entries, batch_id))
    assert m.WhichOneof("body") == "batch"
    return m.batch


@pytest.mark.parametrize("payload", [b"", b"x", b"y" * 127, b"z" * 128, b"w" * 20_000, "héllo", {"a": [1, "é"]}, [1, 2]])
def test_payloads_round_trip(payload: object) -> None:
    entry, size = encode(payload)  # type: ignore[arg-type]
    r = parse([entry]).records[0]
    want = payload if isinstance(payload, bytes) else (
        payload.encode() if isinstance(payload, str) else None)
    if want is not None:
        assert r.payload == want
    else:
        import json
        assert json.loads(r.payload) == payload
    assert size == len(r.payload)
    # byte-identical to protobuf's own encoding
    assert entry == pb.Batch(records=[r]).SerializeToString()


def test_full_record_and_size_rule() -> None:
    t = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    rec = sluice.Record({"id": 7}, key="k€y", attributes={"env": "prod", "é": ""}, event_time=t)
    entry, size = encode(rec)
    r = parse([entry]).records[0]
    assert r.key == "k€y".encode() and dict(r.attributes) == {"env": "prod", "é": ""}
    assert r.event_time_ms == int(t.timestamp() * 1000) and r.payload == b'{"id":7}'
    assert size == len(r.key) + len(r.payload) + len(b"env") + len(b"prod") + len("é".encode())
    assert record_size(rec) == size
    assert sluice.decode_record(entry).attributes == {"env": "prod", "é": ""}


def test_negative_event_time_and_batch_header() -> None:
    entry, _ = encode(sluice.Record(b"p", event_time=-1))
    b = parse([entry, encode(b"q")[0]], first_seq=2**40, batch_id=300)
    assert b.first_seq == 2**40 and b.batch_id == 300 and b.records[0].event_time_ms == -1
    assert parse([encode(b"q")[0]]).batch_id == 0


def test_encode_many_matches_encode() -> None:
    recs = [b"a", "b", {"c": 1}, sluice.Record(b"d", key=b"k"), b"e" * 20_000]
    entries, sizes = encode_many(recs)
    assert entries == [encode(r)[0] for r in recs] and sizes == [encode(r)[1] for r in recs]  # type: ignore[arg-type]
    fast, fsizes = encode_many([b"x" * 100] * 3)
    assert fast == [encode(b"x" * 100)[0]] * 3 and fsizes == [100] * 3


def test_bad_records_raise_type_error() -> None:
    with pytest.raises(TypeError):
        encode({"x": object()})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        encode(sluice.Record(b"x", attributes={"a": 1}))  # type: ignore[dict-item]


def test_json_payloads_are_compact_utf8_whichever_encoder() -> None:
    import json

    from sluice.records import _stdlib_json

    for value in [{"a": 1, "é": [1.5, None, True]}, [1, "x"], {"nested": {"k": "v"}}]:
        entry, _ = encode(value)
        got = parse([entry]).records[0].payload
        assert got == _stdlib_json(value).encode() and json.loads(got) == value
    with pytest.raises(TypeError):
        encode({1: object()})
