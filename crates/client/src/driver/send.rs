//! The sending side of a stream: what may be sent next within the credits,
//! the signals in force and the message size limit ([`Plan`]), and the batch
//! that sends it, charged against the credits.

use std::time::{Duration, Instant};

use sluice_proto::v1::{Backlog, Batch, SourceMessage, source_message};
use tracing::debug;

use super::Driver;
use super::conn::{Conn, SentBatch};
use crate::error::ClientError;

/// The longest spacing between batches under SLOW_DOWN that a drain rate
/// can ask for: a rate measured while a pipeline was nearly stopped must
/// not keep the source idle long after it recovered (RESUME ends it anyway).
const MAX_SLOW_SPACING: Duration = Duration::from_secs(1);

/// What the sender can do next.
pub(super) enum Plan {
    /// Send the next `n` records now.
    Send(usize),
    /// Nothing can be sent before this time.
    WaitUntil(Instant),
    /// Nothing to send until something arrives (records, credit, a signal).
    Idle,
    /// Records wait, but the credit does not cover the next one.
    NoCredit,
    /// The next record can never be sent.
    Fatal(ClientError),
    /// The engine wants records the client no longer holds (an earlier
    /// engine completed them, a range covered them, and this one
    /// restarted since): it takes only contiguous sequence numbers, so the
    /// client reopens with `Open.first_unacked_seq` (its oldest held
    /// record; this one is the next it would send).
    Reopen(u64),
}

impl Driver {
    /// What can be sent next on `conn` at `now`.
    pub(super) fn plan(&self, conn: &mut Conn, now: Instant) -> Plan {
        if conn.tx.is_none() {
            return Plan::Idle;
        }
        if let Some(t) = conn.paused_until.filter(|&t| conn.paused && now < t) {
            return Plan::WaitUntil(t);
        }
        conn.cursor = conn.cursor.max(self.acked_through + 1);
        let idx = self.index_of(conn.cursor);
        let Some(at) = self.pending.get(idx).map(|h| h.seq) else {
            return Plan::Idle;
        };
        if conn.reopen {
            return Plan::Reopen(at);
        }
        if at != conn.cursor {
            // The records from the cursor to the next held one are
            // completed (ranges covered them), so the engine admitted them:
            // carry on after them. (An engine that restarted since answers
            // SEQUENCE_GAP, and the client reopens: see `on_reject`.)
            conn.cursor = at;
        }
        if let Some(t) = conn.not_before {
            if now < t {
                return Plan::WaitUntil(t);
            }
            conn.not_before = None;
            conn.in_backoff = false;
        }
        let target = if conn.slowed {
            (conn.max_batch / 4).max(1)
        } else {
            conn.max_batch
        };
        let unsent = self.pending.len() - idx;
        if unsent < target && !self.input_closed {
            let due = self.pending[idx].arrived + self.opts.linger;
            if now < due {
                return Plan::WaitUntil(due);
            }
        }
        let budget = (conn.max_message_bytes / 10 * 9).saturating_sub(64);
        let (mut n, mut bytes, mut enc) = (0usize, 0u64, 0usize);
        for h in self.pending.range(idx..).take(target) {
            // A batch is contiguous: it ends at a gap.
            if h.seq != conn.cursor + n as u64 {
                break;
            }
            if enc + h.encoded > budget {
                if n == 0 {
                    return Plan::Fatal(ClientError::RecordTooLarge {
                        size: h.encoded,
                        limit: conn.max_message_bytes,
                    });
                }
                break;
            }
            if n as u64 >= conn.credit_records || bytes + h.size > conn.credit_bytes {
                // A record larger than half the byte window may never be
                // covered by byte credit (refills come at half a window):
                // the engine admits it alone on one record credit. The
                // engine states the threshold (`Opened.large_record_bytes`);
                // older ones do not, and the largest byte credit held is a
                // lower bound of the window.
                let large = match conn.large_record_bytes {
                    0 => conn.max_credit_bytes / 2,
                    t => t,
                };
                if n == 0 && conn.credit_records > 0 && h.size > conn.credit_bytes && h.size > large
                {
                    n = 1;
                }
                break;
            }
            n += 1;
            bytes += h.size;
            enc += h.encoded;
        }
        if n == 0 {
            Plan::NoCredit
        } else {
            Plan::Send(n)
        }
    }

    /// The records held from `seq` on (not sent yet, or to be resent), as a
    /// version-2 backlog.
    pub(super) fn backlog_from(&self, seq: u64) -> Backlog {
        let front = self.front_seq();
        let skip = seq.saturating_sub(front) as usize;
        let (records, bytes) = self
            .pending
            .range(skip.min(self.pending.len())..)
            .fold((0u64, 0u64), |(r, b), h| (r + 1, b + h.size));
        Backlog { records, bytes }
    }

    /// Version 2: queues a `Backlog` when the stream has records to send and
    /// no credit for the next one (and did not say so since its last
    /// credit), or `Backlog{0, 0}` once it has nothing left to send, so
    /// that floating credit goes where it is used.
    pub(super) fn announce_backlog(&self, conn: &mut Conn, blocked_on_credit: bool) {
        if conn.version < 2 || conn.tx.is_none() {
            return;
        }
        let backlog = self.backlog_from(conn.cursor);
        let announce = if backlog.records == 0 {
            conn.backlog_announced
        } else {
            blocked_on_credit && !conn.backlog_announced
        };
        if announce {
            conn.backlog_announced = backlog.records > 0;
            debug!(source_id = %self.source_id, records = backlog.records, bytes = backlog.bytes, "backlog");
            conn.outbox.push_back(SourceMessage {
                body: Some(source_message::Body::Backlog(backlog)),
            });
        }
    }

    /// The batch of the next `n` records at the cursor of `conn`; charges
    /// its credit and moves the cursor past it.
    pub(super) fn build(&mut self, conn: &mut Conn, n: usize) -> SourceMessage {
        let idx = self.index_of(conn.cursor);
        let mut records = Vec::with_capacity(n);
        let before = (conn.credit_records, conn.credit_bytes);
        for h in self.pending.range(idx..idx + n) {
            conn.credit_records = conn.credit_records.saturating_sub(1);
            conn.credit_bytes = conn.credit_bytes.saturating_sub(h.size);
            records.push(h.record.clone());
        }
        let first_seq = conn.cursor;
        let last = first_seq + n as u64 - 1;
        let batch_id = if conn.version >= 2 {
            conn.next_batch_id += 1;
            conn.next_batch_id - 1
        } else {
            0
        };
        conn.in_flight.push_back(SentBatch {
            id: batch_id,
            first: first_seq,
            last,
            records: before.0 - conn.credit_records,
            bytes: before.1 - conn.credit_bytes,
        });
        let fresh = last.saturating_sub(self.highest_sent.max(first_seq - 1));
        self.p.sent += fresh;
        self.p.resent += n as u64 - fresh;
        self.highest_sent = self.highest_sent.max(last);
        conn.cursor = last + 1;
        if conn.slowed {
            // Space batches by the suggested wait, and so that the source
            // sends below the rate at which its records complete.
            let mut delay = conn.slow_delay;
            if conn.slow_rate.is_finite() && conn.slow_rate > 0.0 {
                delay = delay.max(Duration::from_secs_f64(
                    (n as f64 / conn.slow_rate).min(MAX_SLOW_SPACING.as_secs_f64()),
                ));
            }
            conn.not_before = Some(Instant::now() + delay);
        }
        debug!(source_id = %self.source_id, first_seq, n, "batch sent");
        SourceMessage {
            body: Some(source_message::Body::Batch(Batch {
                first_seq,
                records,
                batch_id,
            })),
        }
    }
}
