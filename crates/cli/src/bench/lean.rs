//! A lean benchmark source on the generated tonic client, speaking
//! protocol version 2 (`ingest.proto`).
//!
//! One task per source reads the engine's messages and sends batches from
//! the same loop. It sends a batch only when its record and byte credits
//! cover it (credits are tracked exactly, corrected by a rejected batch's
//! `BatchOutcome.credit`), so against a correct engine it is never
//! rejected. It announces its backlog in `Open` and again whenever it lacks
//! credit for records it holds (floating credit goes only to streams that
//! announce one), answers every `Revoke` at once with a `Release`, and
//! announces `Backlog{0, 0}` when it runs dry. Records are the same shared
//! payload (`Bytes`, reference-counted), so the generator allocates one
//! `Vec<Record>` per batch and nothing per record.

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes};
use hdrhistogram::Histogram;
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};

use super::{Signals, new_histogram};
use sluice_proto::v1::engine_message::Body as In;
use sluice_proto::v1::source_message::Body as Out;
use sluice_proto::v1::{
    Backlog, Batch, BatchOutcome, EngineMessage, Open, Record, RejectReason, Release, SignalKind,
    SourceMessage,
};

/// Largest gRPC message the bench client encodes or decodes.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// How long a source waits for its last acks after it stopped sending.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// The protocol version the bench source speaks.
const PROTOCOL_VERSION: u32 = 2;
/// The backlog a source sending until a deadline announces (in records):
/// more than any window, so it always claims its fair share.
const ENDLESS_BACKLOG: u64 = 1 << 40;

/// Live totals over all sources (for progress lines).
#[derive(Debug, Default)]
pub struct Counters {
    /// Records sent (first sends only).
    pub sent: AtomicU64,
    /// Records acked.
    pub acked: AtomicU64,
}

/// What one source sends.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Source id (unique per run).
    pub source_id: String,
    /// Payload of every record.
    pub payload: Bytes,
    /// Records per batch.
    pub batch: usize,
    /// Send this many records, or (None) until `deadline`.
    pub records: Option<u64>,
    /// When to stop sending new records (duration mode).
    pub deadline: Option<Instant>,
    /// Offered rate cap of this source in records/s; 0 = none.
    pub rate: f64,
}

/// What one source measured.
#[derive(Debug)]
pub struct SourceResult {
    /// Ack latency per record, in µs.
    pub hist: Histogram<u64>,
    /// Highest sequence number sent (= records sent, sequences start at 1).
    pub sent: u64,
    /// Last `Ack.through_seq`.
    pub acked: u64,
    /// Last `Ack.delivered`.
    pub delivered: u64,
    /// Last `Ack.dead_lettered`.
    pub dead_lettered: u64,
    /// Last `Ack.filtered`.
    pub filtered: u64,
    /// `Reject` messages.
    pub rejects: u64,
    /// Records named in rejects.
    pub rejected_records: u64,
    /// Signals by kind.
    pub signals: Signals,
    /// When the last ack arrived.
    pub last_ack_at: Option<Instant>,
    /// When the source stopped sending new records, and the records the
    /// engine had completed by then (`delivered + dead_lettered +
    /// filtered` of the last Ack): the pipeline's rate while under load,
    /// without the drain (a failing record's last retries) after it.
    pub done_sending: Option<(Instant, u64)>,
    /// Why the stream failed, if it did.
    pub error: Option<String>,
}

impl SourceResult {
    /// Nothing measured yet.
    fn empty() -> Self {
        Self {
            hist: new_histogram(),
            sent: 0,
            acked: 0,
            delivered: 0,
            dead_lettered: 0,
            filtered: 0,
            rejects: 0,
            rejected_records: 0,
            signals: Signals::default(),
            last_ack_at: None,
            done_sending: None,
            error: None,
        }
    }
}

/// Opens one HTTP/2 connection to `addr`.
pub async fn connect(addr: SocketAddr) -> Result<Channel, String> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| e.to_string())
}

/// A batch sent whose `BatchOutcome` has not arrived yet.
struct Unanswered {
    batch_id: u64,
    first_seq: u64,
    count: u64,
}

/// A batch sent and not yet fully acked.
struct InFlight {
    first_seq: u64,
    count: u64,
    sent_at: Instant,
}

/// Runs one source on `channel` until it has sent what it was asked to and
/// everything it sent is acked (or the stream fails).
pub async fn run_source(
    channel: Channel,
    cfg: SourceConfig,
    counters: Arc<Counters>,
) -> SourceResult {
    let mut res = SourceResult::empty();
    if let Err(e) = source_loop(channel, &cfg, &counters, &mut res).await {
        res.error = Some(format!("{}: {e}", cfg.source_id));
    }
    res
}

async fn source_loop(
    channel: Channel,
    cfg: &SourceConfig,
    counters: &Counters,
    res: &mut SourceResult,
) -> Result<(), String> {
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    grpc.ready().await.map_err(|e| format!("not ready: {e}"))?;
    let (tx, rx) = mpsc::channel::<Outgoing>(4);
    let rec_size = cfg.payload.len() as u64;
    let first_backlog = cfg.records.unwrap_or(ENDLESS_BACKLOG);
    let open = SourceMessage {
        body: Some(Out::Open(Open {
            source_id: cfg.source_id.clone(),
            pipeline: String::new(),
            protocol_version: PROTOCOL_VERSION,
            backlog: Some(Backlog {
                records: first_backlog,
                bytes: first_backlog.saturating_mul(rec_size),
            }),
            first_unacked_seq: 0,
        })),
    };
    tx.send(Outgoing::Message(open))
        .await
        .map_err(|_| "stream closed".to_owned())?;
    let mut tx = Some(tx);
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/sluice.v1.Ingest/Stream");
    let mut inbound = grpc
        .streaming(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            path,
            BenchCodec::<EngineMessage>(PhantomData),
        )
        .await
        .map_err(|s| format!("open: {s}"))?
        .into_inner();
    // The encoded records of a full batch, reused for every full batch.
    let mut encoded: Option<(u64, Bytes)> = None;

    let opened = match inbound.message().await.map_err(|s| s.to_string())? {
        Some(SourceMessageIn {
            body: Some(In::Opened(o)),
        }) => o,
        other => return Err(format!("expected Opened, got {other:?}")),
    };
    if opened.protocol_version < PROTOCOL_VERSION {
        return Err(format!(
            "the engine speaks protocol version {}; the bench source needs {PROTOCOL_VERSION}",
            opened.protocol_version
        ));
    }
    let rec_size = rec_size as i64;
    let mut credit_records = 0i64;
    let mut credit_bytes = 0i64;
    if let Some(c) = opened.credit {
        credit_records = c.records.min(i64::MAX as u64) as i64;
        credit_bytes = c.bytes.min(i64::MAX as u64) as i64;
    }
    // The window: a batch is sent only when credit covers it, unless the
    // window itself is smaller than two batches.
    let mut max_credit_seen = opened
        .window
        .map_or(credit_records, |w| w.records.min(i64::MAX as u64) as i64)
        .max(credit_records);
    let max_batch = (opened.max_batch_records.max(1) as usize).min(cfg.batch) as u64;
    let first = opened.admitted_through_seq + 1;
    let mut next_seq = first;
    let mut max_sent = opened.admitted_through_seq;
    let mut limit_seq: Option<u64> = cfg.records.map(|n| first + n - 1);
    let mut pending: VecDeque<InFlight> = VecDeque::new();
    let mut unanswered: VecDeque<Unanswered> = VecDeque::new();
    let mut next_batch_id = 1u64;
    // Control messages (Release, Backlog), sent before any batch.
    let mut control: VecDeque<SourceMessage> = VecDeque::new();
    // Whether the backlog announced last is not zero and still stands (a
    // Credit or a Revoke ends it: then it is announced again when needed).
    let mut announced = true;
    let start = Instant::now();
    let mut sent_total = 0u64;
    let mut drain_deadline: Option<Instant> = None;
    let far = start + Duration::from_secs(365 * 24 * 3600);

    loop {
        let now = Instant::now();
        if limit_seq.is_none() && cfg.deadline.is_some_and(|d| now >= d) {
            limit_seq = Some(next_seq.saturating_sub(1).max(max_sent));
        }
        let done_sending = limit_seq.is_some_and(|l| next_seq > l);
        if done_sending && announced {
            // Run dry: credit this stream will not use goes to others.
            control.push_back(backlog_msg(0, 0));
            announced = false;
        }
        if done_sending && pending.is_empty() && control.is_empty() && tx.is_some() {
            tx = None; // half-close: the engine ends the stream once all is acked
        }
        if done_sending && drain_deadline.is_none() {
            drain_deadline = Some(now + DRAIN_TIMEOUT);
            res.done_sending = Some((now, res.delivered + res.dead_lettered + res.filtered));
        }
        if drain_deadline.is_some_and(|d| now >= d) {
            return Err(format!(
                "timed out waiting for acks ({} batches pending)",
                pending.len()
            ));
        }
        // How many records the next batch holds, and whether credit covers it.
        let want = match limit_seq {
            Some(l) if next_seq <= l => max_batch.min(l - next_seq + 1),
            Some(_) => 0,
            None => max_batch,
        };
        let covered = |n: u64| credit_records >= n as i64 && credit_bytes >= n as i64 * rec_size;
        let n = if want == 0 || tx.is_none() {
            0
        } else if covered(want) {
            want
        } else if (max_credit_seen as u64) < 2 * want {
            // Window smaller than two batches: send what credit covers.
            let by_bytes = if rec_size > 0 {
                credit_bytes.max(0) / rec_size
            } else {
                i64::MAX
            };
            (credit_records.max(0).min(by_bytes) as u64).min(want)
        } else {
            0
        };
        if n == 0 && want > 0 && !announced && tx.is_some() {
            // Records waiting without the credit to send them: ask for it.
            let held = match limit_seq {
                Some(l) => l + 1 - next_seq,
                None => ENDLESS_BACKLOG,
            };
            let beyond = held.saturating_sub(credit_records.max(0) as u64);
            control.push_back(backlog_msg(beyond, beyond.saturating_mul(rec_size as u64)));
            announced = true;
        }
        let send_at = if cfg.rate > 0.0 {
            start + Duration::from_secs_f64(sent_total as f64 / cfg.rate)
        } else {
            now
        };
        let rate_ready = send_at <= now;
        let can_send = n > 0;
        let wake_at = match (limit_seq, cfg.deadline) {
            (None, Some(d)) => d,
            _ => drain_deadline.unwrap_or(far),
        };
        tokio::select! {
            biased;
            msg = inbound.message() => {
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => {
                        if pending.is_empty() && done_sending {
                            return Ok(());
                        }
                        return Err(format!("stream ended early ({} batches pending)", pending.len()));
                    }
                    Err(s) => return Err(format!("stream failed: {s}")),
                };
                match msg.body {
                    Some(In::Credit(c)) => {
                        credit_records = credit_records.saturating_add(c.records.min(i64::MAX as u64) as i64);
                        credit_bytes = credit_bytes.saturating_add(c.bytes.min(i64::MAX as u64) as i64);
                        max_credit_seen = max_credit_seen.max(credit_records);
                        announced = false;
                    }
                    Some(In::Revoke(r)) => {
                        // Give back what is unused, at once; the engine
                        // grants nothing more until it reads the Release.
                        let records = r.records.min(credit_records.max(0) as u64);
                        let bytes = r.bytes.min(credit_bytes.max(0) as u64);
                        credit_records -= records as i64;
                        credit_bytes -= bytes as i64;
                        control.push_back(SourceMessage {
                            body: Some(Out::Release(Release { revoke_id: r.revoke_id, records, bytes })),
                        });
                        // A revoke clears the announced backlog.
                        announced = false;
                    }
                    Some(In::Outcome(o)) => {
                        // The credit count is exact while every batch is
                        // admitted; only a rejected tail (credit handed
                        // back) resets it to the engine's count, less the
                        // batches sent since. (Not on every outcome: a
                        // Release on the wire would be counted twice.)
                        if let Some(later) = on_outcome(&o, &mut unanswered, &mut pending, res)
                            && let Some(r) = &o.reject
                        {
                            if let Some(c) = o.credit {
                                credit_records = c.records as i64 - later as i64;
                                credit_bytes = c.bytes as i64 - (later as i64) * rec_size;
                            }
                            if r.reason != RejectReason::FollowsReject as i32 {
                                next_seq = next_seq.min(r.admitted_through_seq + 1);
                            }
                        }
                    }
                    Some(In::Signal(s)) => match SignalKind::try_from(s.kind) {
                        Ok(SignalKind::SlowDown) => res.signals.slow_down += 1,
                        Ok(SignalKind::Pause) => res.signals.pause += 1,
                        Ok(SignalKind::Resume) => res.signals.resume += 1,
                        _ => {}
                    },
                    Some(In::Ack(a)) => {
                        let at = Instant::now();
                        while let Some(p) = pending.front_mut() {
                            if p.first_seq > a.through_seq {
                                break;
                            }
                            let covered = (a.through_seq - p.first_seq + 1).min(p.count);
                            let us = at.duration_since(p.sent_at).as_micros() as u64;
                            let _ = res.hist.record_n(us.max(1), covered);
                            p.first_seq += covered;
                            p.count -= covered;
                            if p.count == 0 {
                                pending.pop_front();
                            } else {
                                break;
                            }
                        }
                        // Selective acks: records completed above the
                        // frontier are done too (a range may repeat what an
                        // earlier one covered; nothing is counted twice).
                        for r in &a.completed {
                            take_covered(&mut pending, r.first, r.last, |n, sent_at| {
                                let us = at.duration_since(sent_at).as_micros() as u64;
                                let _ = res.hist.record_n(us.max(1), n);
                            });
                        }
                        if a.through_seq > res.acked {
                            counters.acked.fetch_add(a.through_seq - res.acked, Ordering::Relaxed);
                            res.acked = a.through_seq;
                        }
                        res.delivered = a.delivered;
                        res.dead_lettered = a.dead_lettered;
                        res.filtered = a.filtered;
                        res.last_ack_at = Some(at);
                    }
                    Some(In::Reject(r)) => {
                        return Err(format!("a Reject on a version-2 stream (the engine must send BatchOutcome): {r:?}"));
                    }
                    Some(In::Opened(_)) | None => {}
                }
            }
            permit = reserve(&tx), if !control.is_empty() => {
                let Some(permit) = permit else {
                    return Err("request stream closed".into());
                };
                if let Some(m) = control.pop_front() {
                    permit.send(Outgoing::Message(m));
                }
            }
            permit = reserve(&tx), if can_send && rate_ready && control.is_empty() => {
                let Some(permit) = permit else {
                    return Err("request stream closed".into());
                };
                let records = match &encoded {
                    Some((count, bytes)) if *count == n => bytes.clone(),
                    _ => {
                        let bytes = encode_records(&cfg.payload, n);
                        encoded = Some((n, bytes.clone()));
                        bytes
                    }
                };
                let first_seq = next_seq;
                let batch_id = next_batch_id;
                next_batch_id += 1;
                permit.send(Outgoing::Batch { first_seq, batch_id, records });
                unanswered.push_back(Unanswered { batch_id, first_seq, count: n });
                pending.push_back(InFlight { first_seq, count: n, sent_at: Instant::now() });
                credit_records -= n as i64;
                credit_bytes -= n as i64 * rec_size;
                next_seq += n;
                sent_total += n;
                if next_seq - 1 > max_sent {
                    counters.sent.fetch_add(next_seq - 1 - max_sent, Ordering::Relaxed);
                    max_sent = next_seq - 1;
                }
                res.sent = max_sent - opened.admitted_through_seq;
            }
            _ = tokio::time::sleep_until(send_at), if can_send && !rate_ready => {}
            _ = tokio::time::sleep_until(wake_at) => {}
        }
    }
}

/// `Backlog{records, bytes}` as a message.
fn backlog_msg(records: u64, bytes: u64) -> SourceMessage {
    SourceMessage {
        body: Some(Out::Backlog(Backlog { records, bytes })),
    }
}

/// Handles the `BatchOutcome` of the oldest unanswered batch: a rejected
/// tail is counted and taken out of the pending batches. Returns the
/// records of the batches sent after it (still unanswered), which the
/// outcome's credit does not know of yet; `None` for an outcome of no
/// unanswered batch (ignored).
fn on_outcome(
    o: &BatchOutcome,
    unanswered: &mut VecDeque<Unanswered>,
    pending: &mut VecDeque<InFlight>,
    res: &mut SourceResult,
) -> Option<u64> {
    // Outcomes come in the order the batches were sent.
    while unanswered.front().is_some_and(|u| u.batch_id < o.batch_id) {
        unanswered.pop_front();
    }
    let u = unanswered
        .pop_front()
        .filter(|u| u.batch_id == o.batch_id)?;
    if let Some(r) = &o.reject {
        res.rejects += 1;
        res.rejected_records += r.count;
        // Not admitted: the tail `r.first_seq ..` of this batch leaves the
        // pending batches (it is sent again after the rewind).
        let end = u.first_seq + u.count;
        if r.first_seq < end {
            take_covered(pending, r.first_seq, end - 1, |_, _| {});
        }
    }
    Some(unanswered.iter().map(|u| u.count).sum())
}

/// Takes the records `first..=last` out of the pending batches, splitting a
/// batch the range covers only in part; `done(n, sent_at)` is told of each
/// covered part. Pending batches are in sequence order (a compliant run is
/// never rejected; a reject only shortens or removes batches), so the first
/// one reaching `first` is found by bisection: an Ack costs O(ranges × log
/// batches), not a scan of every batch.
fn take_covered(
    pending: &mut VecDeque<InFlight>,
    first: u64,
    last: u64,
    mut done: impl FnMut(u64, Instant),
) {
    let mut i = pending.partition_point(|p| p.first_seq + p.count <= first);
    while let Some(p) = pending.get_mut(i) {
        if p.first_seq > last || p.count == 0 {
            break;
        }
        let end = p.first_seq + p.count - 1;
        let (lo, hi) = (p.first_seq.max(first), end.min(last));
        done(hi - lo + 1, p.sent_at);
        match (p.first_seq < lo, hi < end) {
            (false, false) => {
                pending.remove(i);
                continue;
            }
            (true, false) => p.count = lo - p.first_seq,
            (false, true) => {
                p.first_seq = hi + 1;
                p.count = end - hi;
            }
            (true, true) => {
                let sent_at = p.sent_at;
                p.count = lo - p.first_seq;
                pending.insert(
                    i + 1,
                    InFlight {
                        first_seq: hi + 1,
                        count: end - hi,
                        sent_at,
                    },
                );
            }
        }
        i += 1;
    }
}

type SourceMessageIn = sluice_proto::v1::EngineMessage;

/// A message on the source's side of the stream.
#[derive(Debug)]
pub enum Outgoing {
    /// Any message, encoded by prost.
    Message(SourceMessage),
    /// `SourceMessage{batch: Batch{first_seq, records, batch_id}}` where
    /// `records` is the already encoded `records` field (see
    /// [`encode_records`]).
    Batch {
        /// Sequence number of the first record.
        first_seq: u64,
        /// `Batch.batch_id` (version 2; 0 for none).
        batch_id: u64,
        /// Encoded repeated `Batch.records` field (tag, length, record)*.
        records: Bytes,
    },
}

/// Encodes `n` records with `payload` as the repeated `records` field of a
/// `Batch` (a `Batch` with `first_seq` 0 encodes as exactly that).
pub fn encode_records(payload: &Bytes, n: u64) -> Bytes {
    let batch = Batch {
        first_seq: 0,
        records: (0..n)
            .map(|_| Record {
                key: Bytes::new(),
                payload: payload.clone(),
                attributes: HashMap::new(),
                event_time_ms: 0,
            })
            .collect(),
        ..Batch::default()
    };
    Bytes::from(batch.encode_to_vec())
}

/// Tag of `SourceMessage.batch` (field 2, length-delimited).
const TAG_SOURCE_BATCH: u8 = (2 << 3) | 2;
/// Tag of `Batch.first_seq` (field 1, varint).
const TAG_FIRST_SEQ: u8 = 1 << 3;
/// Tag of `Batch.batch_id` (field 3, varint).
const TAG_BATCH_ID: u8 = 3 << 3;

/// Prost for what comes in; pre-encoded batches for what goes out: one copy
/// of the encoded records per batch instead of encoding every record.
struct BenchCodec<D>(PhantomData<D>);

impl<D: Message + Default + Send + 'static> Codec for BenchCodec<D> {
    type Encode = Outgoing;
    type Decode = D;
    type Encoder = OutgoingEncoder;
    type Decoder = ProstLikeDecoder<D>;
    fn encoder(&mut self) -> Self::Encoder {
        OutgoingEncoder
    }
    fn decoder(&mut self) -> Self::Decoder {
        ProstLikeDecoder(PhantomData)
    }
}

struct OutgoingEncoder;

impl Encoder for OutgoingEncoder {
    type Item = Outgoing;
    type Error = Status;
    fn encode(&mut self, item: Outgoing, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Outgoing::Message(m) => m
                .encode(dst)
                .map_err(|e| Status::internal(format!("encode: {e}"))),
            Outgoing::Batch {
                first_seq,
                batch_id,
                records,
            } => {
                put_batch(first_seq, batch_id, &records, dst);
                Ok(())
            }
        }
    }
}

/// Writes `SourceMessage{batch: Batch{first_seq, records, batch_id}}`,
/// `records` being the encoded repeated field (from [`encode_records`]);
/// fields in field-number order, as prost writes them.
fn put_batch(first_seq: u64, batch_id: u64, records: &[u8], dst: &mut impl BufMut) {
    let varint_len = |v: u64| {
        if v == 0 {
            0
        } else {
            1 + prost::encoding::encoded_len_varint(v)
        }
    };
    let body_len = varint_len(first_seq) + records.len() + varint_len(batch_id);
    dst.put_u8(TAG_SOURCE_BATCH);
    prost::encoding::encode_varint(body_len as u64, dst);
    if first_seq != 0 {
        dst.put_u8(TAG_FIRST_SEQ);
        prost::encoding::encode_varint(first_seq, dst);
    }
    dst.put_slice(records);
    if batch_id != 0 {
        dst.put_u8(TAG_BATCH_ID);
        prost::encoding::encode_varint(batch_id, dst);
    }
}

struct ProstLikeDecoder<D>(PhantomData<D>);

impl<D: Message + Default> Decoder for ProstLikeDecoder<D> {
    type Item = D;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(format!("decode: {e}")))
    }
}

async fn reserve(tx: &Option<mpsc::Sender<Outgoing>>) -> Option<mpsc::Permit<'_, Outgoing>> {
    match tx {
        Some(tx) => tx.reserve().await.ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covered_records_leave_the_pending_batches_once() {
        let t = Instant::now();
        let batch = |first_seq, count| InFlight {
            first_seq,
            count,
            sent_at: t,
        };
        let mut pending: VecDeque<InFlight> = [batch(1, 10), batch(11, 10)].into();
        let mut taken = 0;
        for (first, last) in [(3, 4), (3, 4), (8, 12), (20, 25), (1, 1)] {
            take_covered(&mut pending, first, last, |n, _| taken += n);
        }
        assert_eq!(taken, 2 + 5 + 1 + 1);
        let left: Vec<(u64, u64)> = pending.iter().map(|p| (p.first_seq, p.count)).collect();
        assert_eq!(left, [(2, 1), (5, 3), (13, 7)]);
    }

    #[test]
    fn an_outcome_with_a_rejected_tail_shortens_its_batch_and_counts_later_ones() {
        let t = Instant::now();
        let mut pending: VecDeque<InFlight> = [(1, 10), (11, 10), (21, 10)]
            .into_iter()
            .map(|(first_seq, count)| InFlight {
                first_seq,
                count,
                sent_at: t,
            })
            .collect();
        let mut unanswered: VecDeque<Unanswered> = [(1, 1), (2, 11), (3, 21)]
            .into_iter()
            .map(|(batch_id, first_seq)| Unanswered {
                batch_id,
                first_seq,
                count: 10,
            })
            .collect();
        let mut res = SourceResult::empty();
        let ok = BatchOutcome {
            batch_id: 1,
            first_seq: 1,
            admitted: 10,
            ..BatchOutcome::default()
        };
        assert_eq!(
            on_outcome(&ok, &mut unanswered, &mut pending, &mut res),
            Some(20)
        );
        let tail = BatchOutcome {
            batch_id: 2,
            first_seq: 11,
            admitted: 4,
            reject: Some(sluice_proto::v1::Reject {
                first_seq: 15,
                count: 6,
                ..Default::default()
            }),
            ..BatchOutcome::default()
        };
        assert_eq!(
            on_outcome(&tail, &mut unanswered, &mut pending, &mut res),
            Some(10)
        );
        let left: Vec<(u64, u64)> = pending.iter().map(|p| (p.first_seq, p.count)).collect();
        assert_eq!(left, [(1, 10), (11, 4), (21, 10)]);
        assert_eq!((res.rejects, res.rejected_records), (1, 6));
        // An outcome of no unanswered batch changes nothing.
        assert_eq!(
            on_outcome(&ok, &mut unanswered, &mut pending, &mut res),
            None
        );
    }

    #[test]
    fn pre_encoded_batch_is_what_prost_encodes() {
        let payload = Bytes::from_static(b"0123456789");
        for (first_seq, n, batch_id) in [
            (1u64, 3u64, 0u64),
            (300, 1, 1),
            (u64::MAX / 3, 512, 300),
            (7, 0, u64::MAX),
        ] {
            let mut out = Vec::new();
            put_batch(first_seq, batch_id, &encode_records(&payload, n), &mut out);
            let want = SourceMessage {
                body: Some(Out::Batch(Batch {
                    first_seq,
                    records: (0..n)
                        .map(|_| Record {
                            payload: payload.clone(),
                            ..Record::default()
                        })
                        .collect(),
                    batch_id,
                })),
            };
            assert_eq!(out, want.encode_to_vec());
            assert_eq!(SourceMessage::decode(&out[..]).unwrap(), want);
        }
    }
}
