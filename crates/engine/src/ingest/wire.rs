//! Decoding `Ingest.Stream` messages straight into engine records.
//!
//! Why not the generated decoder: it builds a `Vec<v1::Record>` (grown one
//! record at a time, so copied as it grows), the session then turned each
//! wire record into an [`EngineRecord`] and the buffer copied each of those
//! into its queue layout: every record was written three to four times
//! before it was queued, into memory the stage workers had just freed on
//! the other core. This decoder writes each record once, into a
//! [`Pending`] batch sized from a first pass over the message, which the
//! buffer admits in place (BENCHMARKS.md, "What changed").
//!
//! The result is what prost's decoder of [`v1::SourceMessage`] gives,
//! converted with `EngineRecord::from`: the same fields, the same
//! "last one wins" and merge rules, unknown fields skipped, and the same
//! inputs rejected (property tests compare the two on valid, damaged, split
//! and random inputs; they found the one difference there was, a map field
//! with another wire type). Errors become `INTERNAL` statuses with prost's
//! message, as tonic's prost codec makes them. One difference is left on
//! purpose: prost counts its recursion limit (100) from the outer message
//! and this decoder from the batch and the record (prost keeps the step
//! down private), so unknown fields nested as groups 98–100 deep inside a
//! record are skipped here and refused by prost. No encoder produces them,
//! and the depth stays bounded.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use prost::DecodeError;
use prost::encoding::{
    DecodeContext, WireType, check_wire_type, decode_key, decode_varint, hash_map, int64,
    merge_loop, skip_field, string, uint64,
};
use sluice_buffer::Pending;
use sluice_proto::v1;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use super::gate::StreamGate;
use crate::record::EngineRecord;
use crate::record_memory::RecordMemory;

/// A decoded `SourceMessage`; `None` when it has no body.
pub(crate) type Inbound = Option<Body>;

/// The body of a `SourceMessage`.
#[derive(Debug)]
pub(crate) enum Body {
    /// The first message of a stream.
    Open(v1::Open),
    /// Records to admit.
    Batch(Batch),
    /// Version 2: the source's backlog.
    Backlog(v1::Backlog),
    /// Version 2: credit the source gives back.
    Release(v1::Release),
}

/// A decoded `Batch`.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// The sequence number of the first record.
    pub(crate) first_seq: u64,
    /// Version 2: the batch's id (0 when not set).
    pub(crate) batch_id: u64,
    /// The records, ready to admit: at most the decoder's `max_records`.
    pub(crate) records: Pending<EngineRecord>,
    /// Records past `max_records`: decoded (so a malformed one still fails
    /// the message, as with prost) and counted, but not kept. A batch that
    /// large is refused past the limit anyway (`BATCH_TOO_LARGE`), and
    /// keeping its records would let one message of `max_message_bytes`
    /// of 2-byte empty records allocate 64 times its size (128 bytes per
    /// record).
    pub(crate) beyond: usize,
}

/// The codec of the engine's `Ingest` service: responses are encoded by
/// prost, requests decoded by [`IngestDecoder`], keeping at most
/// `max_records` records of a batch (`Opened.max_batch_records`), its
/// batch copies counted in `memory`.
#[derive(Debug, Clone)]
pub(crate) struct IngestCodec {
    pub(crate) max_records: usize,
    pub(crate) memory: Arc<RecordMemory>,
    /// The stream's message gate, told of each message decoded.
    pub(crate) gate: Option<Arc<StreamGate>>,
}

impl Codec for IngestCodec {
    type Encode = v1::EngineMessage;
    type Decode = Inbound;
    type Encoder = ProstEncoder<v1::EngineMessage>;
    type Decoder = IngestDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        IngestDecoder {
            max_records: self.max_records,
            memory: self.memory.clone(),
            gate: self.gate.clone(),
        }
    }
}

/// Decodes one `SourceMessage` per gRPC frame, keeping at most
/// `max_records` records of a batch.
#[derive(Debug, Clone)]
pub(crate) struct IngestDecoder {
    max_records: usize,
    memory: Arc<RecordMemory>,
    gate: Option<Arc<StreamGate>>,
}

impl Decoder for IngestDecoder {
    type Item = Inbound;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Inbound>, Status> {
        if let Some(gate) = &self.gate {
            gate.decoding(buf.remaining() as u64);
        }
        decode_source_message(buf, self.max_records, &self.memory)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// Decodes a whole `SourceMessage` from `buf` (all of it), keeping at most
/// `max_records` records of a batch (see [`Batch::beyond`]), its copy
/// counted in `memory`.
pub(crate) fn decode_source_message(
    buf: &mut impl Buf,
    max_records: usize,
    memory: &Arc<RecordMemory>,
) -> Result<Inbound, DecodeError> {
    let ctx = DecodeContext::default();
    let mut body: Inbound = None;
    while buf.has_remaining() {
        let (tag, wire_type) = decode_key(buf)?;
        // A oneof field merges into the variant already there, or replaces
        // another one (prost's rule).
        match tag {
            1 => {
                let mut open = match body.take() {
                    Some(Body::Open(open)) => open,
                    _ => v1::Open::default(),
                };
                prost::encoding::message::merge(wire_type, &mut open, buf, ctx.clone())
                    .map_err(|e| at(e, "SourceMessage", "body"))?;
                body = Some(Body::Open(open));
            }
            2 => {
                let mut batch = match body.take() {
                    Some(Body::Batch(batch)) => batch,
                    _ => Batch::default(),
                };
                merge_batch(wire_type, &mut batch, buf, ctx.clone(), max_records, memory)
                    .map_err(|e| at(e, "SourceMessage", "body"))?;
                body = Some(Body::Batch(batch));
            }
            3 => {
                let mut backlog = match body.take() {
                    Some(Body::Backlog(backlog)) => backlog,
                    _ => v1::Backlog::default(),
                };
                prost::encoding::message::merge(wire_type, &mut backlog, buf, ctx.clone())
                    .map_err(|e| at(e, "SourceMessage", "body"))?;
                body = Some(Body::Backlog(backlog));
            }
            4 => {
                let mut release = match body.take() {
                    Some(Body::Release(release)) => release,
                    _ => v1::Release::default(),
                };
                prost::encoding::message::merge(wire_type, &mut release, buf, ctx.clone())
                    .map_err(|e| at(e, "SourceMessage", "body"))?;
                body = Some(Body::Release(release));
            }
            _ => skip_field(wire_type, tag, buf, ctx.clone())?,
        }
    }
    Ok(body)
}

/// Adds a field to an error's path, as prost's generated code does.
fn at(mut e: DecodeError, message: &'static str, field: &'static str) -> DecodeError {
    e.push(message, field);
    e
}

/// Merges a length-delimited `Batch` into `batch`.
fn merge_batch(
    wire_type: WireType,
    batch: &mut Batch,
    buf: &mut impl Buf,
    ctx: DecodeContext,
    max_records: usize,
    memory: &Arc<RecordMemory>,
) -> Result<(), DecodeError> {
    check_wire_type(WireType::LengthDelimited, wire_type)?;
    let room = max_records.saturating_sub(batch.records.len());
    batch.records.reserve(count_records(buf.chunk()).min(room));
    // The records' keys and payloads are slices of the buffer they are
    // decoded from, each holding a reference count on it. Decoded from
    // tonic's receive buffer, they would all share one count for as long
    // as that buffer lives, incremented here for every record while the
    // sink's worker decrements it for every record it drops on the other
    // core: that cache line bounced between the cores once per record. A
    // copy of the batch (one memcpy) gets a count of its own, and is
    // counted in `memory` while any record references it (`record_memory`).
    // The batch with its length prefix, if it is all in this chunk.
    if let Some(framed) = value_range(buf.chunk()).map(|value| value.end) {
        let mut own = memory.copy(&buf.chunk()[..framed]);
        buf.advance(framed);
        return merge_batch_fields(batch, &mut own, ctx, max_records);
    }
    merge_batch_fields(batch, buf, ctx, max_records)
}

/// Where the value of the length-delimited field at the start of `bytes`
/// lies (after its length prefix), if it is all there.
fn value_range(bytes: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut rest = bytes;
    let len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
    let start = bytes.len() - rest.len();
    let end = start.checked_add(len)?;
    (end <= bytes.len()).then_some(start..end)
}

/// Merges the length-delimited `Batch` fields at the start of `buf`.
fn merge_batch_fields(
    batch: &mut Batch,
    buf: &mut impl Buf,
    ctx: DecodeContext,
    max_records: usize,
) -> Result<(), DecodeError> {
    merge_loop(batch, buf, ctx, |batch, buf, ctx| {
        let (tag, wire_type) = decode_key(buf)?;
        match tag {
            1 => uint64::merge(wire_type, &mut batch.first_seq, buf, ctx)
                .map_err(|e| at(e, "Batch", "first_seq")),
            2 => {
                check_wire_type(WireType::LengthDelimited, wire_type)
                    .map_err(|e| at(e, "Batch", "records"))?;
                let record = decode_record(buf, ctx).map_err(|e| at(e, "Batch", "records"))?;
                if batch.records.len() < max_records {
                    batch.records.push(record);
                } else {
                    batch.beyond += 1;
                }
                Ok(())
            }
            3 => uint64::merge(wire_type, &mut batch.batch_id, buf, ctx)
                .map_err(|e| at(e, "Batch", "batch_id")),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    })
}

/// The number of `records` fields in the length-delimited `Batch` at the
/// start of `bytes`, for sizing its `Pending` once; 0 when the batch is not
/// all in `bytes` or does not parse (the real decode then finds out).
fn count_records(bytes: &[u8]) -> usize {
    let Some(mut body) = value_range(bytes).map(|value| &bytes[value]) else {
        return 0;
    };
    let mut n = 0;
    while !body.is_empty() {
        let Ok((tag, wire_type)) = decode_key(&mut body) else {
            return n;
        };
        let skip = match wire_type {
            WireType::Varint => match decode_varint(&mut body) {
                Ok(_) => 0,
                Err(_) => return n,
            },
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => match decode_varint(&mut body) {
                Ok(len) => {
                    n += usize::from(tag == 2);
                    usize::try_from(len).unwrap_or(usize::MAX)
                }
                Err(_) => return n,
            },
            WireType::StartGroup | WireType::EndGroup => return n,
        };
        if skip > body.len() {
            return n;
        }
        body.advance(skip);
    }
    n
}

/// Decodes one length-delimited `Record` into an engine record.
fn decode_record(buf: &mut impl Buf, ctx: DecodeContext) -> Result<EngineRecord, DecodeError> {
    struct Fields {
        key: Bytes,
        payload: Bytes,
        event_time_ms: i64,
        /// Created only when the record has attributes.
        attributes: Option<HashMap<String, String>>,
    }
    let mut f = Fields {
        key: Bytes::new(),
        payload: Bytes::new(),
        event_time_ms: 0,
        attributes: None,
    };
    merge_loop(&mut f, buf, ctx, |f, buf, ctx| {
        let (tag, wire_type) = decode_key(buf)?;
        match tag {
            1 => prost::encoding::bytes::merge(wire_type, &mut f.key, buf, ctx)
                .map_err(|e| at(e, "Record", "key")),
            2 => prost::encoding::bytes::merge(wire_type, &mut f.payload, buf, ctx)
                .map_err(|e| at(e, "Record", "payload")),
            // prost's map fields check the wire type first (the map merge
            // itself would read any key as a length).
            3 => check_wire_type(WireType::LengthDelimited, wire_type)
                .and_then(|()| {
                    hash_map::merge(
                        string::merge,
                        string::merge,
                        f.attributes.get_or_insert_with(HashMap::new),
                        buf,
                        ctx,
                    )
                })
                .map_err(|e| at(e, "Record", "attributes")),
            4 => int64::merge(wire_type, &mut f.event_time_ms, buf, ctx)
                .map_err(|e| at(e, "Record", "event_time_ms")),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    })?;
    let record = EngineRecord::from_wire_parts(f.key, f.payload, f.event_time_ms);
    Ok(match f.attributes {
        Some(attributes) if !attributes.is_empty() => record.with_attributes(attributes),
        _ => record,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    /// A decoded message in a form both decoders can be compared in; `Err`
    /// when refused.
    type Decoded = Result<Option<Shape>, ()>;

    /// The body: the Open, the Batch's first_seq, batch_id and records, the
    /// Backlog or the Release.
    #[derive(Debug, PartialEq)]
    enum Shape {
        Open(v1::Open),
        Batch(u64, u64, Vec<EngineRecord>),
        Backlog(v1::Backlog),
        Release(v1::Release),
    }

    /// What prost's generated decoder makes of `bytes`.
    fn with_prost(bytes: &[u8]) -> Decoded {
        use v1::source_message::Body as B;
        let m = v1::SourceMessage::decode(bytes).map_err(|_| ())?;
        Ok(m.body.map(|b| match b {
            B::Open(o) => Shape::Open(o),
            B::Batch(b) => Shape::Batch(
                b.first_seq,
                b.batch_id,
                b.records.into_iter().map(EngineRecord::from).collect(),
            ),
            B::Backlog(b) => Shape::Backlog(b),
            B::Release(r) => Shape::Release(r),
        }))
    }

    /// What this module's decoder makes of `bytes`.
    fn with_ours(mut bytes: impl Buf) -> Decoded {
        let m =
            decode_source_message(&mut bytes, usize::MAX, &Default::default()).map_err(|_| ())?;
        Ok(m.map(|b| match b {
            Body::Open(o) => Shape::Open(o),
            Body::Batch(b) => Shape::Batch(b.first_seq, b.batch_id, b.records.into_payloads()),
            Body::Backlog(b) => Shape::Backlog(b),
            Body::Release(r) => Shape::Release(r),
        }))
    }

    fn arb_record() -> impl Strategy<Value = v1::Record> {
        (
            proptest::collection::vec(any::<u8>(), 0..4),
            proptest::collection::vec(any::<u8>(), 0..12),
            proptest::collection::hash_map("[a-c]{0,2}", "[x-z]{0,2}", 0..3),
            any::<i64>(),
        )
            .prop_map(|(key, payload, attributes, event_time_ms)| v1::Record {
                key: key.into(),
                payload: payload.into(),
                attributes,
                event_time_ms,
            })
    }

    fn arb_message() -> impl Strategy<Value = v1::SourceMessage> {
        use v1::source_message::Body as B;
        prop_oneof![
            Just(v1::SourceMessage { body: None }),
            ("[a-z]{0,4}", "[a-z]{0,4}", 0u32..3, any::<u64>()).prop_map(
                |(source_id, pipeline, protocol_version, first_unacked_seq)| v1::SourceMessage {
                    body: Some(B::Open(v1::Open {
                        source_id,
                        pipeline,
                        protocol_version,
                        backlog: None,
                        first_unacked_seq,
                    }))
                }
            ),
            (
                any::<u64>(),
                proptest::collection::vec(arb_record(), 0..6),
                any::<u64>()
            )
                .prop_map(|(first_seq, records, batch_id)| v1::SourceMessage {
                    body: Some(B::Batch(v1::Batch {
                        first_seq,
                        records,
                        batch_id
                    }))
                }),
            (any::<u64>(), any::<u64>()).prop_map(|(records, bytes)| v1::SourceMessage {
                body: Some(B::Backlog(v1::Backlog { records, bytes }))
            }),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(revoke_id, records, bytes)| {
                v1::SourceMessage {
                    body: Some(B::Release(v1::Release {
                        revoke_id,
                        records,
                        bytes,
                    })),
                }
            }),
        ]
    }

    /// Encodings of several messages one after another are one message
    /// to a protobuf decoder (fields merge): this covers repeated and
    /// conflicting oneof fields. Then some bytes are changed, cut or added.
    fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
        (
            proptest::collection::vec(arb_message(), 1..4),
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
            any::<prop::sample::Index>(),
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..4),
        )
            .prop_map(|(msgs, flips, cut, do_cut, extra)| {
                let mut bytes: Vec<u8> = msgs.iter().flat_map(|m| m.encode_to_vec()).collect();
                if !bytes.is_empty() {
                    for (i, b) in flips {
                        let i = i.index(bytes.len());
                        bytes[i] = b;
                    }
                    if do_cut {
                        bytes.truncate(cut.index(bytes.len() + 1));
                    }
                }
                bytes.extend(extra);
                bytes
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Valid messages decode to exactly what prost decodes.
        #[test]
        fn valid_messages_decode_like_prost(msgs in proptest::collection::vec(arb_message(), 1..4)) {
            let bytes: Vec<u8> = msgs.iter().flat_map(|m| m.encode_to_vec()).collect();
            let ours = with_ours(&bytes[..]);
            prop_assert!(ours.is_ok());
            prop_assert_eq!(ours, with_prost(&bytes));
        }

        /// Damaged and random inputs are accepted or refused exactly as by
        /// prost, and when accepted decode to the same.
        #[test]
        fn damaged_messages_decode_like_prost(bytes in arb_bytes()) {
            prop_assert_eq!(with_ours(&bytes[..]), with_prost(&bytes));
        }

        /// A message split over two buffers (not contiguous, so batches
        /// are decoded where they lie instead of from a copy) decodes the same.
        #[test]
        fn split_messages_decode_like_prost(bytes in arb_bytes(), at in any::<prop::sample::Index>()) {
            let at = at.index(bytes.len() + 1);
            let split = Buf::chain(&bytes[..at], &bytes[at..]);
            prop_assert_eq!(with_ours(split), with_prost(&bytes));
        }

        #[test]
        fn random_bytes_decode_like_prost(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(with_ours(&bytes[..]), with_prost(&bytes));
        }
    }

    /// Found by the property tests: `attributes` (a map) with a varint
    /// wire type, which prost refuses.
    #[test]
    fn a_map_field_with_another_wire_type_is_refused_like_prost() {
        // Batch { records: [Record { key: [0], attributes: <varint 0> }] }
        let bytes = [18, 7, 18, 5, 10, 1, 0, 24, 0];
        assert_eq!(with_prost(&bytes), Err(()));
        assert_eq!(with_ours(&bytes[..]), Err(()));
    }

    #[test]
    fn a_batch_is_sized_once_from_a_first_pass() {
        let batch = v1::SourceMessage {
            body: Some(v1::source_message::Body::Batch(v1::Batch {
                first_seq: 1,
                records: (0..100)
                    .map(|i| v1::Record {
                        payload: vec![i as u8; 10].into(),
                        ..Default::default()
                    })
                    .collect(),
                batch_id: 0,
            })),
        }
        .encode_to_vec();
        // Skip the SourceMessage key: what follows is the Batch's length.
        assert_eq!(count_records(&batch[1..]), 100);
        assert_eq!(count_records(&batch[1..batch.len() - 1]), 0, "cut short");
        let mut buf = &batch[..];
        let Some(Body::Batch(b)) =
            decode_source_message(&mut buf, usize::MAX, &Default::default()).unwrap()
        else {
            panic!("not a batch");
        };
        assert_eq!(b.records.len(), 100);
        assert_eq!(b.records.capacity(), 100);
        // With a limit, the rest is counted, not kept (nor reserved for).
        let mut buf = &batch[..];
        let Some(Body::Batch(b)) =
            decode_source_message(&mut buf, 10, &Default::default()).unwrap()
        else {
            panic!("not a batch");
        };
        assert_eq!((b.records.len(), b.beyond), (10, 90));
        assert_eq!(b.records.capacity(), 10);
        // A malformed record past the limit still fails the message.
        let mut bad = batch.clone();
        let last = bad.len() - 1;
        bad[last - 10] = 15; // the last payload claims more bytes than its record has
        assert!(decode_source_message(&mut &bad[..], 10, &Default::default()).is_err());
        assert!(with_prost(&bad).is_err());
    }
}
