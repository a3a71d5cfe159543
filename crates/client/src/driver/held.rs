//! The records a client holds until an `Ack` covers them ([`Held`]), in
//! sequence order: numbering them as they arrive, taking in the input, and
//! forgetting what is acked, cumulatively (`through_seq`) or selectively
//! (a range of `Ack.completed`). The held records are ascending but not
//! always contiguous: a record a range covered leaves a gap behind it, so
//! they are found by sequence number ([`Driver::index_of`]), never by offset.

use std::time::Instant;

use sluice_proto::v1::{Record, SeqRange};
use tokio::sync::mpsc;

use super::Driver;
use crate::record_size;

/// Bytes of framing counted per record when a batch's encoded size is estimated.
const RECORD_FRAMING_BYTES: usize = 16;

/// A record held until acked.
pub(super) struct Held {
    pub(super) seq: u64,
    pub(super) record: Record,
    pub(super) size: u64,
    pub(super) encoded: usize,
    pub(super) arrived: Instant,
}

impl Driver {
    /// Numbers the next record `seq`: everything before it counts as acked
    /// and sent.
    pub(super) fn start_at(&mut self, seq: u64) {
        self.next_assign = seq;
        self.acked_through = seq - 1;
        self.highest_sent = seq - 1;
    }

    /// Holds `record` as the next sequence number.
    pub(super) fn push(&mut self, record: Record) {
        let size = record_size(&record);
        let encoded = prost_len(&record) + RECORD_FRAMING_BYTES;
        self.pending.push_back(Held {
            seq: self.next_assign,
            record,
            size,
            encoded,
            arrived: Instant::now(),
        });
        self.next_assign += 1;
        self.p.submitted += 1;
    }

    /// Holds every record already waiting in the input.
    pub(super) fn absorb_input(&mut self) {
        while !self.input_closed {
            match self.input.try_recv() {
                Ok(record) => self.push(record),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => self.input_closed = true,
            }
        }
    }

    /// Forgets every held record up to `through`.
    pub(super) fn absorb_ack(&mut self, through: u64) {
        if through <= self.acked_through {
            return;
        }
        let mut n = 0usize;
        while self.pending.front().is_some_and(|h| h.seq <= through) {
            self.pending.pop_front();
            n += 1;
        }
        self.permits.add_permits(n);
        self.p.acked += n as u64;
        self.acked_through = through.min(self.next_assign - 1).max(self.acked_through);
    }

    /// Forgets every held record that one of `ranges` covers (completed
    /// above the frontier: a selective ack), so that it no longer counts
    /// against `max_unacked`. Ranges over records never sent are a broken
    /// engine's; they are ignored, since forgetting an unsent record would
    /// lose it. `ranges` come from the peer: unsorted ones only forget less.
    pub(super) fn absorb_ranges(&mut self, ranges: &[SeqRange]) {
        if ranges.is_empty() {
            return;
        }
        let sent = self.highest_sent;
        let mut next = ranges.iter().peekable();
        let mut n = 0usize;
        self.pending.retain(|h| {
            while next.peek().is_some_and(|r| r.last < h.seq) {
                next.next();
            }
            let covered = h.seq <= sent && next.peek().is_some_and(|r| r.first <= h.seq);
            n += usize::from(covered);
            !covered
        });
        if n > 0 {
            self.permits.add_permits(n);
            self.p.acked += n as u64;
        }
    }

    /// The index of the held record numbered `seq`, or of the first one
    /// after it when it is not held.
    pub(super) fn index_of(&self, seq: u64) -> usize {
        self.pending.partition_point(|h| h.seq < seq)
    }

    /// Takes the held record at `idx` out of the stream and renumbers the
    /// records after it (none of them was admitted).
    pub(super) fn take_out(&mut self, idx: usize) -> Option<Held> {
        let h = self.pending.remove(idx)?;
        for later in self.pending.range_mut(idx..) {
            later.seq -= 1;
        }
        self.next_assign -= 1;
        if self.highest_sent >= h.seq {
            self.highest_sent -= 1;
        }
        self.permits.add_permits(1);
        Some(h)
    }

    /// The sequence number of the oldest held record (the next one to be
    /// numbered when none is held).
    pub(super) fn front_seq(&self) -> u64 {
        self.pending.front().map_or(self.next_assign, |h| h.seq)
    }
}

/// The encoded length of `record`.
fn prost_len(record: &Record) -> usize {
    prost::Message::encoded_len(record)
}
