//! The engine's answers on a stream: `Credit` adds credit, signals pause or
//! slow the sending, `Ack` forgets held records (up to its frontier and in
//! its completed ranges), `Reject` rewinds the cursor
//! (or takes a record that can never be admitted out of the stream) and
//! aligns the client's credit with the engine's count.

use std::time::{Duration, Instant};

use sluice_proto::v1::{
    BatchOutcome, EngineMessage, Reject, RejectReason, Release, Revoke, SignalKind, SourceMessage,
    engine_message, source_message,
};
use tracing::{debug, warn};

use super::Driver;
use super::conn::{Conn, SentBatch};
use crate::event::ClientEvent;

/// Pause between batches under `SLOW_DOWN` when the signal suggests none.
pub(super) const DEFAULT_SLOW_DELAY: Duration = Duration::from_millis(20);
/// Under `PAUSE`, time before sending resumes within the credits already held,
/// when the signal suggests none.
const DEFAULT_PAUSE_DELAY: Duration = Duration::from_millis(250);
/// Wait before resending after a reject that suggests none.
const DEFAULT_REJECT_DELAY: Duration = Duration::from_millis(50);

/// A message's `retry_after_ms` as a wait; `default` when it suggests none (0).
fn retry_after(ms: u32, default: Duration) -> Duration {
    match ms {
        0 => default,
        ms => Duration::from_millis(ms.into()),
    }
}

impl Driver {
    /// Handles one message from the engine.
    pub(super) fn handle(&mut self, conn: &mut Conn, msg: EngineMessage) {
        let Some(body) = msg.body else {
            warn!(source_id = %self.source_id, "empty message from the engine ignored");
            return;
        };
        match body {
            engine_message::Body::Outcome(o) => self.on_outcome(conn, o),
            engine_message::Body::Revoke(r) => self.on_revoke(conn, r),
            engine_message::Body::Opened(_) => {
                warn!(source_id = %self.source_id, "second Opened from the engine ignored");
            }
            engine_message::Body::Credit(c) => {
                conn.credit_records = conn.credit_records.saturating_add(c.records);
                conn.credit_bytes = conn.credit_bytes.saturating_add(c.bytes);
                conn.max_credit_bytes = conn.max_credit_bytes.max(conn.credit_bytes);
                conn.backlog_announced = false;
                conn.paused = false;
                self.emit(ClientEvent::Credit(c));
            }
            engine_message::Body::Signal(s) => {
                match SignalKind::try_from(s.kind).unwrap_or(SignalKind::Unspecified) {
                    SignalKind::SlowDown => {
                        conn.slowed = true;
                        conn.slow_delay = retry_after(s.retry_after_ms, DEFAULT_SLOW_DELAY);
                        conn.slow_rate = s.target_records_per_second;
                        self.p.slow_downs += 1;
                    }
                    SignalKind::Pause => {
                        conn.paused = true;
                        let wait = retry_after(s.retry_after_ms, DEFAULT_PAUSE_DELAY);
                        conn.paused_until = Some(Instant::now() + wait);
                        self.p.pauses += 1;
                    }
                    SignalKind::Resume => {
                        conn.paused = false;
                        conn.slowed = false;
                        conn.not_before = conn.not_before.filter(|_| conn.in_backoff);
                        self.p.resumes += 1;
                    }
                    SignalKind::Unspecified => return,
                }
                debug!(source_id = %self.source_id, signal = ?s, "signal");
                self.p.last_signal = Some(s.clone());
                self.emit(ClientEvent::Signal(s));
            }
            engine_message::Body::Ack(a) => {
                self.absorb_ack(a.through_seq);
                self.absorb_ranges(&a.completed);
                // Batches wholly acked were processed by the engine.
                while conn
                    .in_flight
                    .front()
                    .is_some_and(|b| b.last <= self.acked_through)
                {
                    conn.in_flight.pop_front();
                }
                conn.cursor = conn.cursor.max(self.acked_through + 1);
                self.p.delivered = a.delivered;
                self.p.dead_lettered = a.dead_lettered;
                self.p.filtered = a.filtered;
                self.emit(ClientEvent::Ack(a));
            }
            engine_message::Body::Reject(r) => self.on_reject(conn, r),
        }
    }

    /// Version 2: the outcome of one batch. The engine answers batches in
    /// order, so every batch sent before it is answered too; its credit is
    /// the engine's count after the batch, less what this client charged
    /// itself since (batches and releases the engine had not read yet).
    fn on_outcome(&mut self, conn: &mut Conn, o: BatchOutcome) {
        let found = conn.in_flight.iter().position(|b| b.id == o.batch_id);
        if let Some(i) = found {
            conn.in_flight.drain(..=i);
        }
        if let Some(credit) = o.credit {
            let (records, bytes) = conn
                .in_flight
                .iter()
                .fold((0, 0), |(r, b), s| (r + s.records, b + s.bytes));
            conn.credit_records = credit.records.saturating_sub(records);
            conn.credit_bytes = credit.bytes.saturating_sub(bytes);
            conn.max_credit_bytes = conn.max_credit_bytes.max(credit.bytes);
        }
        let Some(r) = o.reject else {
            return;
        };
        let reason = RejectReason::try_from(r.reason).unwrap_or(RejectReason::Unspecified);
        self.p.rejected += r.count;
        if reason == RejectReason::FollowsReject {
            // Sent before this client read the reject it follows; it has
            // rewound for that one already.
            debug!(source_id = %self.source_id, batch_id = o.batch_id, "batch followed a rejected one");
            return;
        }
        debug!(source_id = %self.source_id, batch_id = o.batch_id, first_seq = r.first_seq, count = r.count, ?reason, message = %r.message, "batch rejected");
        self.rewind_for(conn, &r, reason);
        self.emit(ClientEvent::Reject(r));
    }

    /// Version 2: floating credit stayed unused for the lease; give back
    /// what this client does not hold for a batch about to go out.
    fn on_revoke(&mut self, conn: &mut Conn, r: Revoke) {
        let records = r.records.min(conn.credit_records);
        let bytes = r.bytes.min(conn.credit_bytes);
        conn.credit_records -= records;
        conn.credit_bytes -= bytes;
        // Charged like a batch until a later outcome shows the engine read it.
        conn.in_flight.push_back(SentBatch {
            id: 0,
            first: 0,
            last: 0,
            records,
            bytes,
        });
        debug!(source_id = %self.source_id, id = r.revoke_id, records, bytes, "credit released");
        conn.outbox.push_back(SourceMessage {
            body: Some(source_message::Body::Release(Release {
                revoke_id: r.revoke_id,
                records,
                bytes,
            })),
        });
    }

    /// Handles a `Reject`: the records it names are resent after its
    /// `retry_after_ms`, or, rejected as too large, taken out of the stream.
    fn on_reject(&mut self, conn: &mut Conn, r: Reject) {
        self.p.rejected += r.count;
        let reason = RejectReason::try_from(r.reason).unwrap_or(RejectReason::Unspecified);
        debug!(source_id = %self.source_id, first_seq = r.first_seq, count = r.count, ?reason, message = %r.message, "reject");
        self.sync_credit(conn, &r);
        self.reopen_if_forgotten(conn, &r, reason);
        // Version 1: only the reject of the batch right after the admitted
        // sequence number rewinds; the gap rejects of the batches sent after
        // it follow from it.
        if r.first_seq == r.admitted_through_seq.saturating_add(1) {
            self.rewind_for(conn, &r, reason);
        }
        self.emit(ClientEvent::Reject(r));
    }

    /// A gap the client cannot fill: the engine wants a record a range let
    /// it forget (an engine that restarted since it was completed); the
    /// stream is reopened (with `Open.first_unacked_seq`).
    fn reopen_if_forgotten(&mut self, conn: &mut Conn, r: &Reject, reason: RejectReason) {
        let wanted = r.admitted_through_seq.saturating_add(1);
        if reason == RejectReason::SequenceGap && wanted < self.next_assign {
            let idx = self.index_of(wanted);
            if self.pending.get(idx).is_none_or(|h| h.seq != wanted) {
                warn!(source_id = %self.source_id, wanted, "the engine wants records an earlier engine completed; reopening");
                conn.reopen = true;
            }
        }
    }

    /// Rewinds the cursor to where `r` says to resend from (after its
    /// `retry_after_ms`), or, for a record that can never be admitted,
    /// takes that record out of the stream.
    fn rewind_for(&mut self, conn: &mut Conn, r: &Reject, reason: RejectReason) {
        let front = self.front_seq();
        let from = r.admitted_through_seq.saturating_add(1);
        if from < front || from >= self.next_assign {
            return;
        }
        if reason == RejectReason::RecordTooLarge && r.first_seq == from {
            let idx = self.index_of(r.first_seq);
            let held = self.pending.get(idx).is_some_and(|h| h.seq == r.first_seq);
            if let Some(h) = held.then(|| self.take_out(idx)).flatten() {
                self.p.too_large += 1;
                warn!(source_id = %self.source_id, seq = h.seq, size = h.size, "record can never be admitted; taken out of the stream");
                self.emit(ClientEvent::RecordTooLarge {
                    seq: h.seq,
                    record: h.record,
                });
            }
        } else {
            let wait = retry_after(r.retry_after_ms, DEFAULT_REJECT_DELAY);
            conn.not_before = Some(Instant::now() + wait);
            conn.in_backoff = true;
        }
        conn.cursor = from;
    }

    /// Aligns the client's credit with the engine's after a reject.
    ///
    /// The engine does not charge credit for records it did not admit, and
    /// its count is the authority: `Reject.credit` is what it counts the
    /// stream as holding right after the rejected batch. The batches sent
    /// after that one are still on their way (each gets its own outcome), so
    /// their charge is taken off. Older engines send no `credit`: then the
    /// rejected records' charge is given back.
    fn sync_credit(&mut self, conn: &mut Conn, r: &Reject) {
        let last = (r.first_seq + r.count).saturating_sub(1);
        // The batch this reject is about: a reject covers the tail of one
        // batch, and the engine answers batches in the order they were sent.
        let found = conn
            .in_flight
            .iter()
            .position(|b| b.last == last && b.first <= r.first_seq);
        if let Some(i) = found {
            conn.in_flight.drain(..=i);
        }
        match r.credit {
            Some(credit) => {
                let (records, bytes) = if found.is_some() {
                    conn.in_flight
                        .iter()
                        .fold((0, 0), |(r, b), s| (r + s.records, b + s.bytes))
                } else {
                    (0, 0)
                };
                conn.credit_records = credit.records.saturating_sub(records);
                conn.credit_bytes = credit.bytes.saturating_sub(bytes);
                conn.max_credit_bytes = conn.max_credit_bytes.max(credit.bytes);
            }
            None => {
                for h in self.pending.iter() {
                    if h.seq >= r.first_seq && h.seq <= last {
                        conn.credit_records += 1;
                        conn.credit_bytes += h.size;
                    }
                }
            }
        }
        debug!(source_id = %self.source_id, credit_records = conn.credit_records,
            credit_bytes = conn.credit_bytes, in_flight = conn.in_flight.len(), "credit after reject");
    }
}
