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
use std::time::Instant;

use sluice_buffer::{
    AckState, BufferError, ByteSize, Credit, CreditMode, FlowEvent, SourceHandle, SourceId,
    SourceState,
};
use sluice_proto::v1::{self, EngineMessage, RejectReason, engine_message};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::admission;
use super::context::IngestContext;
use super::convert::{credit_msg, msg, reject_reason, reject_text, signal_msg};
use super::gate::StreamGate;
use super::rate::DrainRate;
use super::wire::{self, Body, Inbound};
use crate::record::EngineRecord;
use crate::runtime::{AckProgress, MAX_ACK_RANGES};

/// The longest source id or pipeline name accepted in `Open`, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// The highest protocol version the engine serves (`Open.protocol_version`).
pub const PROTOCOL_VERSION: u32 = 2;

/// What the response stream carries.
pub(crate) type Outbound = Result<EngineMessage, Status>;

/// Reads and checks the first message, registers the source and starts the
/// session task. Errors are the statuses the contract names.
///
/// The first message must arrive within `server.open_timeout`, else the
/// stream ends `DEADLINE_EXCEEDED`: a stream that never sends `Open` would
/// otherwise hold its resources for as long as the client keeps it open.
pub(crate) async fn open(
    ctx: Arc<IngestContext>,
    mut inbound: Streaming<Inbound>,
    grant: Option<crate::auth::Grant>,
    gate: Arc<StreamGate>,
) -> Result<mpsc::Receiver<Outbound>, Status> {
    let open_timeout = ctx.server.open_timeout;
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
        _ = ctx.stop.cancelled() => return Err(Status::unavailable("the engine is shutting down")),
    };
    gate.handled();
    let open = match first.flatten() {
        Some(Body::Open(open)) => open,
        Some(Body::Batch(_)) => return Err(not_open("Batch")),
        Some(Body::Backlog(_)) => return Err(not_open("Backlog")),
        Some(Body::Release(_)) => return Err(not_open("Release")),
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
    if ctx.draining.is_cancelled() {
        return Err(Status::unavailable("the engine is shutting down"));
    }
    let pipeline = if open.pipeline.is_empty() {
        ctx.runtime.pipelines.first()
    } else {
        ctx.runtime
            .pipelines
            .iter()
            .find(|p| *p.name == *open.pipeline)
    }
    .ok_or_else(|| {
        let known: Vec<&str> = ctx.runtime.pipelines.iter().map(|p| &*p.name).collect();
        Status::not_found(format!(
            "pipeline {:?} does not exist (known: {})",
            open.pipeline,
            known.join(", ")
        ))
    })?
    .clone();
    let buffer = &ctx.runtime.buffer;
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
    gate.opened(buffer.clone(), source, &open.source_id);
    let version = open.protocol_version.clamp(1, PROTOCOL_VERSION);
    let mode = if version >= 2 {
        CreditMode::Leased
    } else {
        CreditMode::NonExpiring
    };
    let handle = ctx
        .runtime
        .controller
        .open_source_with(source, mode)
        .map_err(|_| Status::unavailable("the engine is shutting down"))?;
    if version >= 2 {
        if let Some(b) = &open.backlog {
            handle.announce_backlog(Credit::new(b.records, b.bytes));
        }
        if open.first_unacked_seq > 1 {
            resume_at(&ctx, source, &open.source_id, open.first_unacked_seq - 1);
        }
    }
    let super::streams::Registration {
        id: stream_id,
        takeover,
        half_closed,
    } = ctx.streams.register(source);
    let admitted = buffer.admitted_through(source).unwrap_or(0);
    let acks = ctx.runtime.hub.subscribe(source);
    let acked = ctx.runtime.hub.progress(source);
    let signals = handle.subscribe();
    let status = handle.status();
    let credit = if admission::may_take_credit(&ctx, source) {
        handle.grant()
    } else {
        Credit::ZERO
    };
    tracing::info!(source = %open.source_id, pipeline = %pipeline.name, stream = stream_id,
        admitted_through = admitted, acked_through = acked.through_seq, ?credit, "source opened");
    let (tx, rx) = mpsc::channel(64);
    let controller = &ctx.runtime.controller;
    let window = controller.window(SourceState::Normal);
    let opened = msg(engine_message::Body::Opened(v1::Opened {
        admitted_through_seq: admitted,
        acked_through_seq: acked.through_seq,
        credit: Some(credit_msg(credit)),
        max_batch_records: ctx.max_batch_records,
        max_message_bytes: u32::try_from(ctx.server.max_message_bytes).unwrap_or(u32::MAX),
        protocol_version: version,
        window: Some(credit_msg(window)),
        guaranteed: Some(credit_msg(controller.guaranteed())),
        credit_lease_ms: if version >= 2 {
            u32::try_from(controller.config().credit_lease.as_millis()).unwrap_or(u32::MAX)
        } else {
            0
        },
        max_unacked_records: ctx.server.max_unacked_per_session,
        max_record_bytes: ctx
            .message_pool
            .largest_record(buffer.limits().max_record_bytes(), window.bytes),
        large_record_bytes: window.bytes / 2,
    }));
    // The channel is new and has room: these cannot fail.
    let _ = tx.try_send(Ok(opened));
    // A source that reconnects learns its cumulative counts at once, right
    // after `Opened` and before any signal (the contract's catch-up Ack):
    // `Opened` carries only the ack position, and records completed while it
    // was away would otherwise never be reported in an `Ack`. (The first
    // page of ranges; the run loop sends the rest at once.)
    let mut last_ack = AckCursor::default();
    if let Some(ack) = last_ack.next(&ctx, source) {
        let _ = tx.try_send(Ok(msg(engine_message::Body::Ack(ack))));
    }
    let mut acks = acks;
    if last_ack.more {
        acks.mark_changed();
    }
    if status.state != SourceState::Normal
        && let Some(s) = &status.signal
    {
        let _ = tx.try_send(Ok(msg(engine_message::Body::Signal(signal_msg(s, 0.0)))));
    }
    let session = Session {
        ctx: ctx.clone(),
        source,
        name: open.source_id,
        handle: Some(handle),
        tx,
        stream_id,
        takeover,
        half_closed,
        last_ack,
        version,
        rewind: None,
        batches: 0,
        last_signal: status.seq,
        drain: DrainRate::default(),
        gate,
    };
    let span = tracing::info_span!("source", source = %session.name, pipeline = %pipeline.name);
    tokio::spawn(tracing::Instrument::instrument(
        session.run(inbound, signals, acks),
        span,
    ));
    Ok(rx)
}

/// What the stream's Acks have told the source, and where the reporting of
/// completed ranges stands.
///
/// Ranges are reported once each, lowest first, from a cursor: an Ack
/// lists the completed ranges above the frontier and above the last range
/// reported (at most [`MAX_ACK_RANGES`]; `more` when the page was full).
/// Completions arrive mostly in sequence order, so the new ranges are above
/// the cursor and reach the source in the next Ack; a record completed below
/// the cursor (a retried record, a hole filled late) is reported when the
/// frontier passes it. A new stream starts from the frontier, so a source
/// that reconnects learns every range again. The buffer is read, not the
/// hub's merged progress, so that one Ack is one consistent reading
/// (ranges above its own `through_seq`).
#[derive(Debug, Default)]
struct AckCursor {
    /// The last Ack's reading (ranges aside).
    sent: AckState,
    /// Highest sequence number reported in a range on this stream.
    ranges_through: u64,
    /// The last Ack listed a full page: ranges may remain above it.
    more: bool,
}

impl AckCursor {
    /// The next Ack to send, if anything changed since the last one.
    fn next(&mut self, ctx: &IngestContext, source: SourceId) -> Option<v1::Ack> {
        let buffer = &ctx.runtime.buffer;
        let now = buffer
            .ack_state(source, self.ranges_through, MAX_ACK_RANGES)
            .ok()?;
        let moved = now.acked_through > self.sent.acked_through
            || (now.delivered, now.dead_lettered, now.filtered)
                != (
                    self.sent.delivered,
                    self.sent.dead_lettered,
                    self.sent.filtered,
                );
        if !moved && now.ranges.is_empty() {
            self.more = false;
            return None;
        }
        self.more = now.ranges.len() == MAX_ACK_RANGES;
        if let Some(last) = now.ranges.last() {
            self.ranges_through = last.last;
        }
        let completed = now
            .ranges
            .iter()
            .map(|r| v1::SeqRange {
                first: r.first,
                last: r.last,
            })
            .collect();
        let ack = v1::Ack {
            through_seq: now.acked_through,
            delivered: now.delivered,
            dead_lettered: now.dead_lettered,
            filtered: now.filtered,
            completed,
        };
        self.sent = AckState {
            ranges: Vec::new(),
            ..now
        };
        Some(ack)
    }
}

/// The status for a first message that is not `Open`.
fn not_open(got: &str) -> Status {
    Status::invalid_argument(format!(
        "the first message of a stream must be Open, got {got}"
    ))
}

struct Session {
    ctx: Arc<IngestContext>,
    source: SourceId,
    name: String,
    handle: Option<SourceHandle<EngineRecord>>,
    tx: mpsc::Sender<Outbound>,
    stream_id: u64,
    takeover: CancellationToken,
    half_closed: Arc<AtomicBool>,
    last_ack: AckCursor,
    /// The protocol version served (`Opened.protocol_version`).
    version: u32,
    /// Version 2: the sequence number the source was last told to resend
    /// from, until a batch starts there: later batches that start after a
    /// gap were sent before the source read that reject, and are told they
    /// follow it (`FOLLOWS_REJECT`) instead of being told to rewind again.
    rewind: Option<u64>,
    /// Batches received on this stream.
    batches: u64,
    /// The `seq` of the last source status whose signal was sent (or that
    /// was current at open).
    last_signal: u64,
    /// The source's completion rate, for `Signal.target_records_per_second`.
    drain: DrainRate,
    /// What the stream may make the engine read (ingest/gate.rs).
    gate: Arc<StreamGate>,
}

/// Moves `source`'s sequence up to `through` when the engine holds nothing
/// of it in flight ([`BufferManager::resume_at`](sluice_buffer::BufferManager::resume_at)),
/// and its ack position with it.
fn resume_at(ctx: &IngestContext, source: SourceId, name: &str, through: u64) -> bool {
    match ctx.runtime.buffer.resume_at(source, through) {
        Ok(true) => {
            ctx.runtime.hub.advance(source, through);
            tracing::info!(source = %name, through,
                "source resumes after records completed elsewhere: its sequence moved up");
            true
        }
        _ => false,
    }
}

/// What happened to one batch.
#[derive(Debug, Default)]
struct Handled {
    /// Leading records admitted before (a resend).
    duplicates: u64,
    /// Records admitted now.
    admitted: u64,
    /// The tail that was not admitted.
    reject: Option<v1::Reject>,
}

/// Why the loop ended.
enum StreamEnd {
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
                    break StreamEnd::Gone;
                }
                break StreamEnd::Status(None);
            }
            let handle = self.handle.as_ref();
            tokio::select! {
                biased;
                _ = self.takeover.cancelled() => {
                    break StreamEnd::Status(Some(Status::aborted(format!(
                        "a newer stream opened for source {:?}", self.name))));
                }
                _ = self.ctx.stop.cancelled() => {
                    if self.send_ack().await.is_err() {
                        break StreamEnd::Gone;
                    }
                    break StreamEnd::Status(Some(Status::unavailable("the engine shut down; resend what was not acked")));
                }
                _ = self.tx.closed() => break StreamEnd::Gone,
                m = inbound.message(), if input_open => match m {
                    Ok(Some(m)) => {
                        let out = self.on_message(m);
                        // What the message took at the gate is let go once it is handled.
                        self.gate.handled();
                        match out {
                            Ok(out) => {
                                if self.send_all(out).await.is_err() {
                                    break StreamEnd::Gone;
                                }
                            }
                            Err(status) => {
                                // An engine that stopped tells the source how far
                                // it got before the stream ends.
                                if status.code() == tonic::Code::Unavailable
                                    && self.send_ack().await.is_err()
                                {
                                    break StreamEnd::Gone;
                                }
                                break StreamEnd::Status(Some(status));
                            }
                        }
                    }
                    Ok(None) => {
                        input_open = false;
                        self.half_closed.store(true, Ordering::Relaxed);
                        credits_open = false;
                        if let Some(h) = self.handle.take() {
                            let released = h.close();
                            tracing::debug!(source = %self.name, ?released, "source half-closed; unused credit released");
                        }
                    }
                    Err(status) => break StreamEnd::Status(Some(self.inbound_failed(status))),
                },
                s = signals.changed(), if signals_open => match s {
                    Some(status) => {
                        if self.send_signal(&status).await.is_err() {
                            break StreamEnd::Gone;
                        }
                    }
                    None => signals_open = false,
                },
                r = acks.changed(), if acks_open => match r {
                    Ok(()) => {
                        if self.send_ack().await.is_err() {
                            break StreamEnd::Gone;
                        }
                    }
                    Err(_) => acks_open = false,
                },
                c = async { match handle { Some(h) => h.wait_flow().await, None => None } }, if credits_open && admission::may_take_credit(&self.ctx, self.source) => match c {
                    Some(FlowEvent::Credit(c)) => {
                        if self.send_credit(c).await.is_err() {
                            break StreamEnd::Gone;
                        }
                    }
                    Some(FlowEvent::Revoke { id, credit }) => {
                        let revoke = v1::Revoke { revoke_id: id, records: credit.records, bytes: credit.bytes };
                        tracing::debug!(source = %self.name, id, ?credit, "floating credit unused for the lease: revoke");
                        if self.send(engine_message::Body::Revoke(revoke)).await.is_err() {
                            break StreamEnd::Gone;
                        }
                    }
                    None => credits_open = false,
                },
            }
        };
        // Release the unused reservation before anything else.
        drop(self.handle.take());
        self.half_closed.store(true, Ordering::Relaxed);
        self.ctx.streams.unregister(self.source, self.stream_id);
        match end {
            StreamEnd::Status(None) => {
                tracing::info!(source = %self.name, acked_through = self.last_ack.sent.acked_through, "source stream completed");
            }
            StreamEnd::Status(Some(status)) => {
                tracing::info!(source = %self.name, code = ?status.code(), message = status.message(), "source stream ended");
                let _ = self.tx.send(Err(status)).await;
            }
            StreamEnd::Gone => {
                tracing::info!(source = %self.name, "source disconnected");
            }
        }
    }

    /// The status that ends the stream after reading from it failed: the
    /// failure itself, so that a source whose message could not be decoded
    /// (for example one larger than `server.max_message_bytes`) learns why.
    /// If the source is gone instead, nobody receives it, which is harmless.
    fn inbound_failed(&self, status: Status) -> Status {
        // The gate's own statuses name their settings already.
        if let Some(status) = self.gate.failure() {
            return status;
        }
        let limit = self.ctx.server.max_message_bytes;
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

    /// The highest sequence number of the source admitted so far.
    fn admitted(&self) -> u64 {
        let buffer = &self.ctx.runtime.buffer;
        buffer.admitted_through(self.source).unwrap_or(0)
    }

    /// The source's records completed so far (delivered, dead-lettered or
    /// filtered), for its drain rate.
    fn completed(&self) -> u64 {
        let p = self.ctx.runtime.hub.progress(self.source);
        p.delivered + p.dead_lettered + p.filtered
    }

    fn all_acked(&self) -> bool {
        self.ctx.runtime.hub.progress(self.source).through_seq >= self.admitted()
    }

    async fn send(&self, body: engine_message::Body) -> Result<(), ()> {
        self.tx.send(Ok(msg(body))).await.map_err(|_| ())
    }

    async fn send_all(&mut self, out: Vec<engine_message::Body>) -> Result<(), ()> {
        for body in out {
            match body {
                engine_message::Body::Credit(c) => {
                    self.send_credit(Credit::new(c.records, c.bytes)).await?
                }
                body => self.send(body).await?,
            }
        }
        Ok(())
    }

    /// Sends the signal of `status` unless it was sent already.
    async fn send_signal(&mut self, status: &sluice_buffer::SourceStatus) -> Result<(), ()> {
        if status.seq <= self.last_signal {
            return Ok(());
        }
        self.last_signal = status.seq;
        match &status.signal {
            Some(sig) => {
                let now = Instant::now();
                self.drain.observe(now, self.completed());
                let rate = self.drain.per_second(now);
                self.send(engine_message::Body::Signal(signal_msg(sig, rate)))
                    .await
            }
            None => Ok(()),
        }
    }

    /// Sends a credit, after any signal the source was not told yet, so a
    /// source never sees a `Credit` between PAUSE and RESUME: if the source
    /// is paused by then, the credit goes back instead.
    async fn send_credit(&mut self, credit: Credit) -> Result<(), ()> {
        let Some(status) = self.handle.as_ref().map(SourceHandle::status) else {
            return Ok(());
        };
        self.send_signal(&status).await?;
        if status.state == SourceState::Paused {
            if let Some(h) = &self.handle {
                h.release(0, credit);
            }
            return Ok(());
        }
        self.send(engine_message::Body::Credit(credit_msg(credit)))
            .await
    }

    /// Sends an Ack when the progress moved or ranges completed since the
    /// last one sent; more Acks right after while ranges remain unreported
    /// (an Ack carries at most [`MAX_ACK_RANGES`]).
    async fn send_ack(&mut self) -> Result<(), ()> {
        self.drain.observe(Instant::now(), self.completed());
        while let Some(ack) = self.last_ack.next(&self.ctx, self.source) {
            self.send(engine_message::Body::Ack(ack)).await?;
            if !self.last_ack.more {
                break;
            }
        }
        Ok(())
    }

    fn on_message(&mut self, m: Inbound) -> Result<Vec<engine_message::Body>, Status> {
        match m {
            Some(Body::Open(_)) => Err(Status::invalid_argument(
                "Open was sent twice on one stream",
            )),
            Some(Body::Batch(b)) => self.on_batch(b),
            Some(Body::Backlog(b)) => Ok(self.on_backlog(Credit::new(b.records, b.bytes))),
            Some(Body::Release(r)) => {
                if let Some(h) = &self.handle {
                    let released = h.release(r.revoke_id, Credit::new(r.records, r.bytes));
                    tracing::debug!(source = %self.name, id = r.revoke_id, ?released, "credit released by the source");
                }
                Ok(Vec::new())
            }
            None => Err(Status::invalid_argument("empty SourceMessage (no body)")),
        }
    }

    /// A reject of `count` records from `first_seq`, counted and logged.
    fn reject(
        &self,
        first_seq: u64,
        count: u64,
        reason: RejectReason,
        message: String,
        retry_after_ms: u32,
    ) -> v1::Reject {
        self.ctx.runtime.hub.add_rejected(self.source, count);
        let admitted = self.admitted();
        let credit = self
            .handle
            .as_ref()
            .map_or(Credit::ZERO, SourceHandle::credit);
        tracing::debug!(source = %self.name, first_seq, count, ?reason, %message, ?credit, "records rejected");
        self.ctx
            .rejected(&self.name, count, reason.as_str_name(), &message);
        v1::Reject {
            first_seq,
            count,
            reason: reason as i32,
            message,
            retry_after_ms,
            admitted_through_seq: admitted,
            credit: Some(credit_msg(credit)),
        }
    }

    /// Credit for this stream if it may take some now.
    fn grant(&self) -> Option<engine_message::Body> {
        let handle = self.handle.as_ref()?;
        if !admission::may_take_credit(&self.ctx, self.source) {
            return None;
        }
        let credit = handle.grant();
        (!credit.is_zero()).then(|| engine_message::Body::Credit(credit_msg(credit)))
    }

    /// Version 2: the source's backlog; credit follows at once if it may
    /// take some.
    fn on_backlog(&mut self, backlog: Credit) -> Vec<engine_message::Body> {
        let Some(handle) = self.handle.as_ref() else {
            return Vec::new();
        };
        handle.announce_backlog(backlog);
        self.grant().into_iter().collect()
    }

    fn on_batch(&mut self, batch: wire::Batch) -> Result<Vec<engine_message::Body>, Status> {
        let batch_id = batch.batch_id;
        if self.version >= 2 && batch_id == 0 {
            return Err(Status::invalid_argument(format!(
                "Batch.batch_id must be at least 1 on a protocol-version-2 stream (source {:?})",
                self.name
            )));
        }
        let first = batch.first_seq;
        let first_of_stream = self.batches == 0;
        self.batches += 1;
        let outcome = self.admit_batch(batch, first_of_stream)?;
        let mut out = Vec::new();
        if self.version >= 2 {
            if let Some(r) = &outcome.reject
                && r.reason != RejectReason::FollowsReject as i32
            {
                self.rewind = Some(r.admitted_through_seq + 1);
            }
            let credit = self
                .handle
                .as_ref()
                .map_or(Credit::ZERO, SourceHandle::credit);
            out.push(engine_message::Body::Outcome(v1::BatchOutcome {
                batch_id,
                first_seq: first,
                duplicates: outcome.duplicates,
                admitted: outcome.admitted,
                reject: outcome.reject,
                credit: Some(credit_msg(credit)),
            }));
        } else if let Some(r) = outcome.reject {
            out.push(engine_message::Body::Reject(r));
        }
        out.extend(self.grant());
        Ok(out)
    }

    /// Admits what the stream's credit covers of `batch`, and says what
    /// happened to the rest.
    fn admit_batch(
        &mut self,
        batch: wire::Batch,
        first_of_stream: bool,
    ) -> Result<Handled, Status> {
        // The decoder kept at most `max_batch_records` and counted the rest.
        let n = batch.records.len() + batch.beyond;
        let first = batch.first_seq;
        if first == 0 {
            return Err(Status::invalid_argument(format!(
                "Batch.first_seq must be at least 1 (0 is never a sequence number; source {:?})",
                self.name
            )));
        }
        if n == 0 {
            return Ok(Handled::default());
        }
        let last = first.checked_add(n as u64 - 1).ok_or_else(|| {
            Status::invalid_argument(format!(
                "sequence numbers overflow u64 (first_seq {first}, {n} records; source {:?})",
                self.name
            ))
        })?;
        self.ctx.runtime.hub.add_received(self.source, n as u64);
        let pause_ms = u32::try_from(
            self.ctx
                .runtime
                .controller
                .config()
                .pause_retry_after
                .as_millis(),
        )
        .unwrap_or(u32::MAX);
        let rejected = |this: &Self, reason, message: String, retry| Handled {
            reject: Some(this.reject(first, n as u64, reason, message, retry)),
            ..Handled::default()
        };
        // While draining, what the stream's credit covers is still admitted
        // (and drained): the source was told PAUSE (SHUTDOWN), and a source
        // that stays within its credit is never rejected; the rest is
        // rejected SHUTTING_DOWN.
        let draining = self.ctx.draining.is_cancelled();
        let Some(handle) = self.handle.as_ref() else {
            return Err(Status::failed_precondition(format!(
                "batch after end of input (source {:?})",
                self.name
            )));
        };
        let admitted_before = self.admitted();
        if first > admitted_before.saturating_add(1) && admitted_before > 0 {
            // After a gap. Version 2: a batch sent before the source read an
            // earlier reject is told so (once rewound, it resends from there).
            if self.version >= 2 && self.rewind.is_some() {
                return Ok(rejected(
                    self,
                    RejectReason::FollowsReject,
                    format!(
                        "this batch follows a rejected one: resend from {} (source {:?})",
                        admitted_before + 1,
                        self.name
                    ),
                    0,
                ));
            }
            // The first batch of a stream may start further on when
            // everything admitted here is completed: the records between
            // were completed elsewhere (another replica), or the source
            // would not have forgotten them.
            if first_of_stream {
                resume_at(&self.ctx, self.source, &self.name, first - 1);
            }
        } else {
            self.rewind = None;
        }
        let mut records = batch.records;
        let batch_bytes = records.bytes();
        // The tail this session refuses itself, before the buffer sees it.
        let mut tail: Option<(RejectReason, String, u32)> = None;
        let max = self.ctx.max_batch_records as usize;
        if n > max {
            records.truncate(max);
            tail = Some((
                RejectReason::BatchTooLarge,
                format!(
                    "a batch holds at most {max} records (Opened.max_batch_records); got {n} \
                     (source {:?})",
                    self.name
                ),
                0,
            ));
        }
        // Only what the credit covers is admitted (the buffer itself would
        // take free capacity beyond the reservation).
        let plan = handle.cover(first, &records);
        if plan.covered < records.len() {
            let sent = records.len() - plan.duplicates;
            let sent_bytes: u64 = records
                .payloads()
                .skip(plan.duplicates)
                .map(|r| r.byte_size() as u64)
                .sum();
            let gate = self.ctx.runtime.gate.borrow().clone();
            let (reason, why) = if draining {
                (
                    RejectReason::ShuttingDown,
                    "the engine is shutting down: it admits only what the stream's credit covers"
                        .to_owned(),
                )
            } else if gate.closed {
                (
                    RejectReason::Memory,
                    format!(
                        "the memory gate is closed ({}) and no new credit is granted",
                        gate.describe()
                    ),
                )
            } else {
                (
                    RejectReason::NoCredit,
                    "records beyond the stream's credit are not admitted (the source sent more \
                     than it was granted)"
                        .to_owned(),
                )
            };
            let message = format!(
                "source {:?}: {why}: outstanding credit {} records / {} bytes, sent {} new \
                 records / {} bytes; the first {} admitted, the rest rejected (not charged)",
                self.name,
                plan.credit.records,
                plan.credit.bytes,
                sent,
                sent_bytes,
                plan.covered - plan.duplicates,
            );
            records.truncate(plan.covered);
            tail = Some((reason, message, pause_ms));
        }
        // `server.max_unacked_per_session`: a backstop (credit is granted
        // within it, so only a source beyond its credit gets here).
        let (cap, room) = admission::unacked_room(&self.ctx, self.source);
        let dupes = plan.duplicates.min(records.len());
        if (records.len() - dupes) as u64 > room {
            let keep = dupes + room as usize;
            let message = format!(
                "source {:?}: the session has {} records admitted and not completed; at most \
                 {cap} may be (server.max_unacked_per_session): the first {room} new records \
                 admitted, the rest rejected (not charged)",
                self.name,
                cap - room
            );
            records.truncate(keep);
            tail = Some((RejectReason::SourceLimit, message, pause_ms));
        }
        let kept = records.len() as u64;
        // A head admitted from a mostly refused batch would keep the whole
        // copy alive: less than half of it moves out (`record_memory`).
        if kept > 0 && records.bytes().saturating_mul(2) < batch_bytes {
            crate::record_memory::compact(&self.ctx.runtime.record_memory, records.payloads_mut());
        }
        let mut handled = Handled::default();
        match handle.admit(first, records) {
            Ok(admission) => {
                handled.duplicates = admission.duplicates as u64;
                handled.admitted = admission.admitted as u64;
                if admitted_before == 0 && admission.admitted > 0 && first > 1 {
                    // The source's first records here start further on (a
                    // resend to a restarted engine): everything below counts
                    // as acked at once, or the records below would count as
                    // unacked (`server.max_unacked_per_session`).
                    self.ctx.runtime.hub.advance(self.source, first - 1);
                }
                if let Some(rej) = admission.rejected {
                    let retry = if rej.reason.is_transient() {
                        pause_ms
                    } else {
                        0
                    };
                    let buffer = &self.ctx.runtime.buffer;
                    let text = reject_text(&rej.reason, &self.name, |s| {
                        buffer.stage(s).map(|i| i.name.to_string())
                    });
                    handled.reject = Some(self.reject(
                        rej.first_seq,
                        last - rej.first_seq + 1,
                        reject_reason(&rej.reason),
                        text,
                        retry,
                    ));
                } else if let Some((reason, message, retry)) = tail {
                    handled.reject =
                        Some(self.reject(first + kept, n as u64 - kept, reason, message, retry));
                }
            }
            Err(BufferError::SequenceGap { expected, .. }) => {
                return Ok(rejected(
                    self,
                    RejectReason::SequenceGap,
                    format!(
                        "source {:?}: expected seq {expected}, got {first}; resend from \
                         admitted_through_seq + 1",
                        self.name
                    ),
                    0,
                ));
            }
            Err(BufferError::Closed) => {
                // Drained and stopped: the stream ends now (after its last
                // Ack), as it would a moment later; the source resends what
                // was not acked to the next engine. A reject here would
                // charge a compliant source for the engine's own exit.
                return Err(Status::unavailable(format!(
                    "the engine shut down; resend what was not acked (source {:?})",
                    self.name
                )));
            }
            Err(e @ (BufferError::ZeroSequence | BufferError::SequenceOverflow { .. })) => {
                return Err(Status::invalid_argument(format!(
                    "{e} (source {:?})",
                    self.name
                )));
            }
            Err(e) => return Err(Status::internal(e.to_string())),
        }
        Ok(handled)
    }
}
