//! One `Ingest.Stream`: the per-source state machine of the wire contract.
//!
//! ```text
//!  (await Open) ──bad first message──▶ INVALID_ARGUMENT / NOT_FOUND (handler returns the status)
//!       │       ──no message within server.open_timeout──▶ DEADLINE_EXCEEDED
//!       │ Open ok: register source, open a credit session, Opened{credit}
//!       ▼
//!  OPEN ── Batch ──▶ admit ⇒ Reject for any tail, Credit refill
//!   │  ◀── Credit (controller), Signal (subscription), Ack (AckHub) ──
//!   │ half-close: release unused credit
//!   ▼
//!  CLOSING ── all admitted records acked ──▶ end OK
//!
//!  any state: newer stream for the source ──▶ ABORTED
//!             engine stop (after draining)  ──▶ last Ack, then UNAVAILABLE
//!             second Open / first_seq 0      ──▶ INVALID_ARGUMENT
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sluice_buffer::{
    BufferError, ByteSize, Credit, Level, Pending, RejectReason as BufReject,
    SignalKind as BufKind, SignalReason as BufReason, SourceHandle, SourceId, SourceState,
};
use sluice_proto::v1::{
    self, EngineMessage, RejectReason, SignalKind, SignalReason, engine_message,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use crate::ack::AckProgress;
use crate::record::EngineRecord;
use crate::server::Shared;
use crate::wire::{self, Body, Inbound};

/// The longest source id or pipeline name accepted in `Open`, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// What the response stream carries.
pub(crate) type Outbound = Result<EngineMessage, Status>;

/// An active stream of a source, as the registry knows it.
#[derive(Debug)]
pub(crate) struct StreamEntry {
    pub(crate) id: u64,
    pub(crate) takeover: CancellationToken,
    pub(crate) half_closed: Arc<AtomicBool>,
}

fn msg(body: engine_message::Body) -> EngineMessage {
    EngineMessage { body: Some(body) }
}

fn credit_msg(c: Credit) -> v1::Credit {
    v1::Credit {
        records: c.records,
        bytes: c.bytes,
    }
}

/// The proto form of a flow-control signal.
pub(crate) fn signal_msg(s: &sluice_buffer::BackpressureSignal) -> v1::Signal {
    v1::Signal {
        kind: match s.kind {
            BufKind::SlowDown => SignalKind::SlowDown,
            BufKind::Pause => SignalKind::Pause,
            BufKind::Resume => SignalKind::Resume,
        } as i32,
        reason: match s.reason {
            BufReason::Global => SignalReason::Global,
            BufReason::Stage(_) => SignalReason::Stage,
            BufReason::Source => SignalReason::Source,
            BufReason::Memory => SignalReason::Memory,
            BufReason::Shutdown => SignalReason::Shutdown,
        } as i32,
        utilization: s.utilization,
        retry_after_ms: u32::try_from(s.retry_after.as_millis()).unwrap_or(u32::MAX),
        stage: s.stage_name.as_deref().unwrap_or_default().to_owned(),
    }
}

fn reject_reason(r: &BufReject) -> RejectReason {
    match r {
        BufReject::Limit { level, .. } => match level {
            Level::Global => RejectReason::GlobalLimit,
            Level::Stage(_) => RejectReason::StageLimit,
            Level::Source(_) => RejectReason::SourceLimit,
        },
        BufReject::TooLarge { .. } => RejectReason::RecordTooLarge,
    }
}

/// Reads and checks the first message, registers the source and starts the
/// session task. Errors are the statuses the contract names.
///
/// The first message must arrive within `server.open_timeout`, else the
/// stream ends `DEADLINE_EXCEEDED`: a stream that never sends `Open` would
/// otherwise hold its resources for as long as the client keeps it open.
pub(crate) async fn open(
    shared: Arc<Shared>,
    mut inbound: Streaming<Inbound>,
    grant: Option<crate::auth::Grant>,
) -> Result<mpsc::Receiver<Outbound>, Status> {
    let open_timeout = shared.settings.server.open_timeout;
    let first = tokio::select! {
        m = tokio::time::timeout(open_timeout, inbound.message()) => match m {
            Ok(m) => m?,
            Err(_elapsed) => {
                tracing::info!(?open_timeout, "stream ended: no Open within server.open_timeout");
                return Err(Status::deadline_exceeded(format!(
                    "no Open within server.open_timeout ({open_timeout:?}); \
                     the first message of a stream must be Open"
                )));
            }
        },
        _ = shared.stop.cancelled() => return Err(Status::unavailable("the engine is shutting down")),
    };
    let open = match first.flatten() {
        Some(Body::Open(open)) => open,
        Some(Body::Batch(_)) => {
            return Err(Status::invalid_argument(
                "the first message of a stream must be Open, got Batch",
            ));
        }
        None => {
            return Err(Status::invalid_argument(
                "the first message of a stream must be Open, got an empty message or end of stream",
            ));
        }
    };
    if open.source_id.is_empty() {
        return Err(Status::invalid_argument("Open.source_id must not be empty"));
    }
    // Names are echoed in statuses, logs and metric labels: bound them (an
    // unbounded echo once broke the client's HTTP/2 header limit).
    for (what, name) in [
        ("Open.source_id", &open.source_id),
        ("Open.pipeline", &open.pipeline),
    ] {
        if name.len() > MAX_NAME_BYTES {
            return Err(Status::invalid_argument(format!(
                "{what} is {} bytes long; at most {MAX_NAME_BYTES} are allowed",
                name.len()
            )));
        }
    }
    if let Some(grant) = &grant {
        grant.check(&open.source_id)?;
    }
    if shared.draining.is_cancelled() {
        return Err(Status::unavailable("the engine is shutting down"));
    }
    let pipeline = if open.pipeline.is_empty() {
        shared.pipelines.first()
    } else {
        shared.pipelines.iter().find(|p| *p.name == *open.pipeline)
    }
    .ok_or_else(|| {
        let known: Vec<&str> = shared.pipelines.iter().map(|p| &*p.name).collect();
        Status::not_found(format!(
            "pipeline {:?} does not exist (known: {})",
            open.pipeline,
            known.join(", ")
        ))
    })?
    .clone();
    let buffer = &shared.buffer;
    let source = buffer
        .register_source(&open.source_id, pipeline.id)
        .map_err(|e| match e {
            BufferError::PipelineMismatch { .. } => Status::failed_precondition(format!(
                "source {:?} already feeds another pipeline in this engine process: {e}",
                open.source_id
            )),
            BufferError::Closed => Status::unavailable("the engine is shutting down"),
            other => Status::internal(other.to_string()),
        })?;
    shared.hub.set_name(source, &open.source_id);
    let handle = shared
        .controller
        .open_source(source)
        .map_err(|_| Status::unavailable("the engine is shutting down"))?;
    let (stream_id, takeover, half_closed) = shared.register_stream(source);
    let admitted = buffer.admitted_through(source).unwrap_or(0);
    let acks = shared.hub.subscribe(source);
    let acked = shared.hub.progress(source);
    let signals = handle.subscribe();
    let status = handle.status();
    let credit = if may_take_credit(&shared, source) {
        handle.grant()
    } else {
        Credit::ZERO
    };
    tracing::info!(source = %open.source_id, pipeline = %pipeline.name, stream = stream_id,
        admitted_through = admitted, acked_through = acked.through_seq, ?credit, "source opened");
    let (tx, rx) = mpsc::channel(64);
    let opened = msg(engine_message::Body::Opened(v1::Opened {
        admitted_through_seq: admitted,
        acked_through_seq: acked.through_seq,
        credit: Some(credit_msg(credit)),
        max_batch_records: shared.max_batch_records,
        max_message_bytes: u32::try_from(shared.settings.server.max_message_bytes)
            .unwrap_or(u32::MAX),
    }));
    // The channel is new and has room: these cannot fail.
    let _ = tx.try_send(Ok(opened));
    if status.state != SourceState::Normal
        && let Some(s) = &status.signal
    {
        let _ = tx.try_send(Ok(msg(engine_message::Body::Signal(signal_msg(s)))));
    }
    // A source that reconnects learns its cumulative counts at once:
    // `Opened` carries only the ack position, and records completed while it
    // was away would otherwise never be reported in an `Ack`.
    if acked.through_seq > 0 {
        let _ = tx.try_send(Ok(msg(engine_message::Body::Ack(v1::Ack {
            through_seq: acked.through_seq,
            delivered: acked.delivered,
            dead_lettered: acked.dead_lettered,
            filtered: acked.filtered,
        }))));
    }
    let session = Session {
        shared: shared.clone(),
        source,
        name: open.source_id,
        handle: Some(handle),
        tx,
        stream_id,
        takeover,
        half_closed,
        last_ack: acked,
    };
    let span = tracing::info_span!("source", source = %session.name, pipeline = %pipeline.name);
    tokio::spawn(tracing::Instrument::instrument(
        session.run(inbound, signals, acks),
        span,
    ));
    Ok(rx)
}

/// Records of `source` admitted and not yet acked.
fn unacked(shared: &Shared, source: SourceId) -> u64 {
    let admitted = shared.buffer.admitted_through(source).unwrap_or(0);
    admitted.saturating_sub(shared.hub.progress(source).through_seq)
}

/// Whether a session of `source` may be granted credit under
/// `server.max_unacked_per_session`: only while its unacked records plus a
/// full credit window (the most credit a grant tops it up to; capped at the
/// limit at start-up) fit, so that a source sending within its credit never
/// exceeds the limit.
fn may_take_credit(shared: &Shared, source: SourceId) -> bool {
    let window = shared.controller.window(SourceState::Normal).records;
    unacked(shared, source).saturating_add(window) <= shared.settings.server.max_unacked_per_session
}

struct Session {
    shared: Arc<Shared>,
    source: SourceId,
    name: String,
    handle: Option<SourceHandle<EngineRecord>>,
    tx: mpsc::Sender<Outbound>,
    stream_id: u64,
    takeover: CancellationToken,
    half_closed: Arc<AtomicBool>,
    last_ack: AckProgress,
}

/// How much of a batch the stream's credit covers (see `Session::credit_plan`).
struct CreditPlan {
    /// Leading records already admitted before (a resend); free.
    dupes: usize,
    /// Records handed to the buffer (the duplicates included); the rest is
    /// rejected without credit.
    keep: usize,
    /// The credit the stream held before the batch.
    credit: Credit,
}

/// Why the loop ended.
enum End {
    /// End with this status (OK = `None`).
    Status(Option<Status>),
    /// The client is gone: nothing to send.
    Gone,
}

impl Session {
    async fn run(
        mut self,
        mut inbound: Streaming<Inbound>,
        mut signals: sluice_buffer::SignalReceiver,
        mut acks: watch::Receiver<AckProgress>,
    ) {
        let mut input_open = true;
        let mut credits_open = true;
        let mut signals_open = true;
        let mut acks_open = true;
        let end = loop {
            if !input_open && self.all_acked() {
                if self.send_ack().await.is_err() {
                    break End::Gone;
                }
                break End::Status(None);
            }
            let handle = self.handle.as_ref();
            tokio::select! {
                biased;
                _ = self.takeover.cancelled() => {
                    break End::Status(Some(Status::aborted(format!(
                        "a newer stream opened for source {:?}", self.name))));
                }
                _ = self.shared.stop.cancelled() => {
                    if self.send_ack().await.is_err() {
                        break End::Gone;
                    }
                    break End::Status(Some(Status::unavailable("the engine shut down; resend what was not acked")));
                }
                _ = self.tx.closed() => break End::Gone,
                m = inbound.message(), if input_open => match m {
                    Ok(Some(m)) => match self.on_message(m) {
                        Ok(out) => {
                            if self.send_all(out).await.is_err() {
                                break End::Gone;
                            }
                        }
                        Err(status) => break End::Status(Some(status)),
                    },
                    Ok(None) => {
                        input_open = false;
                        self.half_closed.store(true, Ordering::Relaxed);
                        credits_open = false;
                        if let Some(h) = self.handle.take() {
                            let released = h.close();
                            tracing::debug!(source = %self.name, ?released, "source half-closed; unused credit released");
                        }
                    }
                    Err(status) => break End::Status(Some(self.inbound_failed(status))),
                },
                s = signals.changed(), if signals_open => match s {
                    Some(status) => {
                        if let Some(sig) = &status.signal
                            && self.send(engine_message::Body::Signal(signal_msg(sig))).await.is_err()
                        {
                            break End::Gone;
                        }
                    }
                    None => signals_open = false,
                },
                r = acks.changed(), if acks_open => match r {
                    Ok(()) => {
                        if self.send_ack().await.is_err() {
                            break End::Gone;
                        }
                    }
                    Err(_) => acks_open = false,
                },
                c = async { match handle { Some(h) => h.wait_credit().await, None => None } }, if credits_open && may_take_credit(&self.shared, self.source) => match c {
                    Some(c) => {
                        if self.send(engine_message::Body::Credit(credit_msg(c))).await.is_err() {
                            break End::Gone;
                        }
                    }
                    None => credits_open = false,
                },
            }
        };
        // Release the unused reservation before anything else.
        drop(self.handle.take());
        self.half_closed.store(true, Ordering::Relaxed);
        self.shared.unregister_stream(self.source, self.stream_id);
        match end {
            End::Status(None) => {
                tracing::info!(source = %self.name, acked_through = self.last_ack.through_seq, "source stream completed");
            }
            End::Status(Some(status)) => {
                tracing::info!(source = %self.name, code = ?status.code(), message = status.message(), "source stream ended");
                let _ = self.tx.send(Err(status)).await;
            }
            End::Gone => {
                tracing::info!(source = %self.name, "source disconnected");
            }
        }
    }

    /// The status that ends the stream after reading from it failed: the
    /// failure itself, so that a source whose message could not be decoded
    /// (for example one larger than `server.max_message_bytes`) learns why.
    /// If the source is gone instead, nobody receives it, which is harmless.
    fn inbound_failed(&self, status: Status) -> Status {
        let limit = self.shared.settings.server.max_message_bytes;
        tracing::info!(source = %self.name, code = ?status.code(), message = status.message(),
            "reading from the source failed");
        match status.code() {
            // tonic's "decoded message length too large: found N bytes, the
            // limit is: M bytes"; say where the limit comes from.
            code @ (tonic::Code::OutOfRange | tonic::Code::ResourceExhausted) => Status::new(
                code,
                format!(
                    "{} (the engine decodes messages of at most {limit} bytes, \
                     Opened.max_message_bytes; send smaller batches)",
                    status.message()
                ),
            ),
            _ => status,
        }
    }

    fn all_acked(&self) -> bool {
        let admitted = self
            .shared
            .buffer
            .admitted_through(self.source)
            .unwrap_or(0);
        self.shared.hub.progress(self.source).through_seq >= admitted
    }

    async fn send(&self, body: engine_message::Body) -> Result<(), ()> {
        self.tx.send(Ok(msg(body))).await.map_err(|_| ())
    }

    async fn send_all(&self, out: Vec<engine_message::Body>) -> Result<(), ()> {
        for body in out {
            self.send(body).await?;
        }
        Ok(())
    }

    /// Sends an Ack when the progress moved since the last one sent.
    async fn send_ack(&mut self) -> Result<(), ()> {
        let p = self.shared.hub.progress(self.source);
        if p == self.last_ack || p.through_seq < self.last_ack.through_seq {
            return Ok(());
        }
        self.last_ack = p;
        self.send(engine_message::Body::Ack(v1::Ack {
            through_seq: p.through_seq,
            delivered: p.delivered,
            dead_lettered: p.dead_lettered,
            filtered: p.filtered,
        }))
        .await
    }

    fn on_message(&mut self, m: Inbound) -> Result<Vec<engine_message::Body>, Status> {
        match m {
            Some(Body::Open(_)) => Err(Status::invalid_argument(
                "Open was sent twice on one stream",
            )),
            Some(Body::Batch(b)) => self.on_batch(b),
            None => Err(Status::invalid_argument("empty SourceMessage (no body)")),
        }
    }

    /// The credit this stream holds and has not used: the session's ledger,
    /// bounded by what the buffer holds reserved for the source (the
    /// authority; the two agree while one stream feeds the source).
    fn outstanding(&self, handle: &SourceHandle<EngineRecord>) -> Credit {
        let reserved = self
            .shared
            .buffer
            .reserved(self.source)
            .unwrap_or(Credit::ZERO);
        let own = handle.outstanding();
        Credit::new(
            own.records.min(reserved.records),
            own.bytes.min(reserved.bytes),
        )
    }

    /// How far the stream's credit covers `records` (numbered from `first`).
    ///
    /// Leading records at or below the admitted sequence number are a resend
    /// and free. Then each record takes one record credit and its size in
    /// byte credits; the first one the credit does not cover ends the part
    /// handed to the buffer, with two exceptions, both for a record that no
    /// byte credit can ever cover, so that it is not refused forever:
    ///
    /// - a record larger than a byte limit goes to the buffer, which rejects
    ///   it (and the rest) as `RECORD_TOO_LARGE`;
    /// - a record larger than half the byte window (refills come only once
    ///   half a window is used, so its byte credit may never arrive), first
    ///   in its batch, is admitted alone on one record credit and all the
    ///   byte credit the stream holds, the rest of its size taken from free
    ///   capacity (within every limit, or rejected with the limit that was
    ///   hit).
    fn credit_plan(
        &self,
        handle: &SourceHandle<EngineRecord>,
        first: u64,
        records: &Pending<EngineRecord>,
    ) -> CreditPlan {
        let buffer = &self.shared.buffer;
        let admitted = buffer.admitted_through(self.source).unwrap_or(0);
        let dupes = admitted.saturating_sub(first - 1).min(records.len() as u64) as usize;
        let credit = self.outstanding(handle);
        let limits = buffer.limits();
        let max_record = limits
            .global
            .bytes
            .min(limits.per_stage.bytes)
            .min(limits.per_source.bytes);
        let window_bytes = self.shared.controller.window(SourceState::Normal).bytes;
        let mut keep = records.len();
        if dupes == 0
            && records.len() as u64 <= credit.records
            && records.bytes() <= credit.bytes
            && records.largest() <= max_record
            && records.largest() < u64::from(u32::MAX)
        {
            // The common case, from the batch's totals: all of it is covered.
            return CreditPlan {
                dupes,
                keep,
                credit,
            };
        }
        let mut left = credit;
        for (i, r) in records.payloads().enumerate().skip(dupes) {
            let size = r.byte_size() as u64;
            if size > max_record {
                keep = i + 1;
                break;
            }
            if left.records >= 1 && left.bytes >= size {
                left.records -= 1;
                left.bytes -= size;
                continue;
            }
            keep = if i == dupes && left.records >= 1 && size > window_bytes / 2 {
                i + 1
            } else {
                i
            };
            break;
        }
        CreditPlan {
            dupes,
            keep,
            credit,
        }
    }

    fn reject(
        &self,
        first_seq: u64,
        count: u64,
        reason: RejectReason,
        message: String,
        retry_after_ms: u32,
    ) -> engine_message::Body {
        self.shared.hub.add_rejected(self.source, count);
        let admitted = self
            .shared
            .buffer
            .admitted_through(self.source)
            .unwrap_or(0);
        let credit = self
            .handle
            .as_ref()
            .map_or(Credit::ZERO, |h| self.outstanding(h));
        tracing::debug!(source = %self.name, first_seq, count, ?reason, %message, ?credit, "records rejected");
        (self.shared.observe).rejected(&self.name, count, reason.as_str_name(), &message);
        engine_message::Body::Reject(v1::Reject {
            first_seq,
            count,
            reason: reason as i32,
            message,
            retry_after_ms,
            admitted_through_seq: admitted,
            credit: Some(credit_msg(credit)),
        })
    }

    fn on_batch(&mut self, batch: wire::Batch) -> Result<Vec<engine_message::Body>, Status> {
        // The decoder kept at most `max_batch_records` and counted the rest.
        let n = batch.records.len() + batch.beyond;
        let first = batch.first_seq;
        if first == 0 {
            return Err(Status::invalid_argument(
                "Batch.first_seq must be at least 1 (0 is never a sequence number)",
            ));
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let last = first.checked_add(n as u64 - 1).ok_or_else(|| {
            Status::invalid_argument(format!(
                "sequence numbers overflow u64 (first_seq {first}, {n} records)"
            ))
        })?;
        self.shared.hub.add_received(self.source, n as u64);
        let pause_ms = u32::try_from(
            self.shared
                .controller
                .config()
                .pause_retry_after
                .as_millis(),
        )
        .unwrap_or(u32::MAX);
        if self.shared.draining.is_cancelled() {
            return Ok(vec![self.reject(
                first,
                n as u64,
                RejectReason::ShuttingDown,
                "the engine is shutting down and admits nothing more".into(),
                0,
            )]);
        }
        let Some(handle) = self.handle.as_ref() else {
            return Err(Status::failed_precondition("batch after end of input"));
        };
        let mut records = batch.records;
        // The tail this session refuses itself, before the buffer sees it.
        let mut tail: Option<(RejectReason, String, u32)> = None;
        let max = self.shared.max_batch_records as usize;
        if n > max {
            records.truncate(max);
            tail = Some((
                RejectReason::BatchTooLarge,
                format!("a batch holds at most {max} records (Opened.max_batch_records); got {n}"),
                0,
            ));
        }
        // Only what the credit covers is admitted (the buffer itself would
        // take free capacity beyond the reservation).
        let plan = self.credit_plan(handle, first, &records);
        if plan.keep < records.len() {
            let sent = records.len() - plan.dupes;
            let sent_bytes: u64 = records
                .payloads()
                .skip(plan.dupes)
                .map(|r| r.byte_size() as u64)
                .sum();
            let (reason, why) = if self.shared.gate.borrow().closed {
                (
                    RejectReason::Memory,
                    "the memory gate is closed and no new credit is granted",
                )
            } else {
                (
                    RejectReason::NoCredit,
                    "records beyond the stream's credit are not admitted",
                )
            };
            let message = format!(
                "{why}: outstanding credit {} records / {} bytes, sent {} new records / {} bytes; \
                 the first {} admitted, the rest rejected (not charged)",
                plan.credit.records,
                plan.credit.bytes,
                sent,
                sent_bytes,
                plan.keep - plan.dupes,
            );
            records.truncate(plan.keep);
            tail = Some((reason, message, pause_ms));
        }
        // `server.max_unacked_per_session`: a backstop (credit is granted
        // within it, so only a source beyond its credit gets here).
        let cap = self.shared.settings.server.max_unacked_per_session;
        let room = cap.saturating_sub(unacked(&self.shared, self.source));
        let dupes = plan.dupes.min(records.len());
        if (records.len() - dupes) as u64 > room {
            let keep = dupes + room as usize;
            let message = format!(
                "the session has {} records admitted and not acked; at most {cap} may be \
                 (server.max_unacked_per_session): the first {room} new records admitted, the \
                 rest rejected (not charged)",
                cap - room
            );
            records.truncate(keep);
            tail = Some((RejectReason::SourceLimit, message, pause_ms));
        }
        let kept = records.len() as u64;
        let mut out = Vec::new();
        match handle.admit(first, records) {
            Ok(admission) => {
                if let Some(rej) = admission.rejected {
                    let retry = if rej.reason.is_transient() {
                        pause_ms
                    } else {
                        0
                    };
                    out.push(self.reject(
                        rej.first_seq,
                        last - rej.first_seq + 1,
                        reject_reason(&rej.reason),
                        rej.reason.to_string(),
                        retry,
                    ));
                } else if let Some((reason, message, retry)) = tail {
                    out.push(self.reject(first + kept, n as u64 - kept, reason, message, retry));
                }
            }
            Err(BufferError::SequenceGap { expected, .. }) => {
                out.push(self.reject(
                    first,
                    n as u64,
                    RejectReason::SequenceGap,
                    format!(
                        "expected seq {expected}, got {first}; resend from admitted_through_seq + 1"
                    ),
                    0,
                ));
            }
            Err(BufferError::Closed) => {
                out.push(self.reject(
                    first,
                    n as u64,
                    RejectReason::ShuttingDown,
                    "the engine is shutting down and admits nothing more".into(),
                    0,
                ));
            }
            Err(e @ (BufferError::ZeroSequence | BufferError::SequenceOverflow { .. })) => {
                return Err(Status::invalid_argument(e.to_string()));
            }
            Err(e) => return Err(Status::internal(e.to_string())),
        }
        let credit = if may_take_credit(&self.shared, self.source) {
            handle.grant()
        } else {
            Credit::ZERO
        };
        if !credit.is_zero() {
            out.push(engine_message::Body::Credit(credit_msg(credit)));
        }
        Ok(out)
    }
}
