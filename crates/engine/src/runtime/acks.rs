//! The [`AckHub`]: per-source ack progress, published by the pipeline
//! workers and read by the ingest sessions.
//!
//! Each source has a `watch` channel holding its latest [`AckProgress`]. A
//! worker publishes after every completion (sink commit, filter, dead
//! letter); a session waits on the channel and sends an `Ack` when the
//! position advanced. Every field only moves forward (publications from
//! concurrent workers are merged by maximum), so acks stay monotonic.
//!
//! The completed ranges above the frontier (selective acks) are not merged
//! here: two workers' lists cannot be merged by maximum, and copying them at
//! every completion would cost the common case (no ranges) for the rare one.
//! Every completion changes a cumulative count, so the channel wakes the
//! session for every new range too, and the session reads the ranges from
//! the buffer, the one authority ([`BufferManager::ack_state`]), at most
//! [`MAX_ACK_RANGES`] at a time. [`AckProgress::ranges`] says whether there
//! are any (as of the latest publication).
//!
//! [`BufferManager::ack_state`]: sluice_buffer::BufferManager::ack_state

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use sluice_buffer::{Completion, SourceId};
use tokio::sync::watch;

/// Most completed ranges one `Ack` carries (`Ack.completed` in
/// `ingest.proto`); more are sent in the Acks that follow.
pub const MAX_ACK_RANGES: usize = 64;

/// A source's cumulative completion progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AckProgress {
    /// Every record of the source up to this sequence number is completed.
    pub through_seq: u64,
    /// Records committed by the sink (filtered records excluded).
    pub delivered: u64,
    /// Records written to the dead-letter sink.
    pub dead_lettered: u64,
    /// Records filtered out by a transform.
    pub filtered: u64,
    /// Completed ranges above `through_seq` at the latest publication (not
    /// merged by maximum: the latest one wins; read them with
    /// [`BufferManager::ack_state`](sluice_buffer::BufferManager::ack_state)).
    pub ranges: usize,
    /// Records admitted and not completed at the latest publication.
    pub outstanding: u64,
}

#[derive(Debug)]
struct SourceAcks {
    tx: watch::Sender<AckProgress>,
    /// Records received from the source (admitted or not).
    received: AtomicU64,
    /// Records named in a `Reject` sent to the source (whatever refused
    /// them: the session's credit check or the buffer's limits).
    rejected: AtomicU64,
}

impl SourceAcks {
    fn new() -> Self {
        Self {
            tx: watch::channel(AckProgress::default()).0,
            received: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }
}

/// Per-source ack progress and counters, indexed by [`SourceId`].
#[derive(Debug, Default)]
pub struct AckHub {
    entries: Mutex<Vec<Option<Arc<SourceAcks>>>>,
}

impl AckHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&self, source: SourceId) -> Arc<SourceAcks> {
        let mut entries = self.entries.lock();
        if entries.len() <= source.index() {
            entries.resize_with(source.index() + 1, || None);
        }
        entries[source.index()]
            .get_or_insert_with(|| Arc::new(SourceAcks::new()))
            .clone()
    }

    /// A subscription to `source`'s progress (the current value counts as seen).
    pub fn subscribe(&self, source: SourceId) -> watch::Receiver<AckProgress> {
        self.entry(source).tx.subscribe()
    }

    /// The latest progress of `source`.
    pub fn progress(&self, source: SourceId) -> AckProgress {
        *self.entry(source).tx.borrow()
    }

    /// Counts `n` records received from `source` (admitted or not).
    pub fn add_received(&self, source: SourceId, n: u64) {
        self.entry(source).received.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` records of `source` named in a `Reject`.
    pub fn add_rejected(&self, source: SourceId, n: u64) {
        self.entry(source).rejected.fetch_add(n, Ordering::Relaxed);
    }

    /// `(received, rejected)` of `source`.
    pub fn counters(&self, source: SourceId) -> (u64, u64) {
        let e = self.entry(source);
        (
            e.received.load(Ordering::Relaxed),
            e.rejected.load(Ordering::Relaxed),
        )
    }

    /// Moves `source`'s ack position up to `through` (after
    /// [`BufferManager::resume_at`](sluice_buffer::BufferManager::resume_at)
    /// moved its sequence: everything up to it counts as completed).
    pub fn advance(&self, source: SourceId, through: u64) {
        self.entry(source).tx.send_if_modified(|cur| {
            let changed = through > cur.through_seq;
            cur.through_seq = cur.through_seq.max(through);
            changed
        });
    }

    /// Publishes what a completion changed.
    pub fn publish(&self, completion: &Completion) {
        for p in &completion.sources {
            let e = self.entry(p.source);
            let new = AckProgress {
                through_seq: p.acked_through,
                delivered: p.delivered,
                dead_lettered: p.dead_lettered,
                filtered: p.filtered,
                ranges: p.ranges,
                outstanding: p.outstanding,
            };
            e.tx.send_if_modified(|cur| {
                // A publication older than the current one (a worker that
                // completed first but published last) moved no count: its
                // readings of ranges and outstanding records are stale.
                let newer = new.delivered >= cur.delivered
                    && new.dead_lettered >= cur.dead_lettered
                    && new.filtered >= cur.filtered;
                let (ranges, outstanding) = if newer {
                    (new.ranges, new.outstanding)
                } else {
                    (cur.ranges, cur.outstanding)
                };
                let merged = AckProgress {
                    through_seq: cur.through_seq.max(new.through_seq),
                    delivered: cur.delivered.max(new.delivered),
                    dead_lettered: cur.dead_lettered.max(new.dead_lettered),
                    filtered: cur.filtered.max(new.filtered),
                    ranges,
                    outstanding,
                };
                let changed = merged != *cur;
                *cur = merged;
                changed
            });
        }
    }
}
