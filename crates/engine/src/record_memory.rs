//! The memory behind records' bytes: how much is alive, and moving a
//! record that outlives its batch into an allocation of its own.
//!
//! A decoded record's key and payload are slices of one copy of its
//! message (`ingest/wire.rs`): one allocation per batch, freed when the
//! last record sliced from it is dropped. A batch that flows through whole
//! costs its bytes once. But one record kept past the rest of its batch
//! (waiting out a retry backoff, the survivor of a filter, the covered head
//! of a mostly rejected batch) keeps the whole copy alive, while the byte
//! limits charge it only its own bytes. The engine therefore *compacts*
//! such a record: it copies its key and payloads into an allocation sized
//! for them and drops its slices of the batch copy. The rule (the
//! measurements are in BENCHMARKS.md, the rule in docs/architecture.md,
//! "Record memory"):
//!
//! - a record that fails (a transform error or a sink's refusal) is
//!   compacted on its first failure, before it waits out its backoff (one
//!   allocation and a copy of its own bytes, on the failure path only);
//! - the records a transform keeps are compacted together, into one
//!   allocation, when they are less than half of their part's bytes (a
//!   filter that drops most of a batch);
//! - the records a session admits are compacted together when they are
//!   less than half of their message copy (a batch mostly refused beyond
//!   its credit).
//!
//! Every copy made here or by the decoder is counted in a [`RecordMemory`]
//! while it is alive: one atomic add when it is made and one subtraction
//! when its last record is dropped, per batch, not per record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::record::EngineRecord;

/// The record memory of one engine: the bytes of the message copies (and
/// compacted copies) that records still reference.
///
/// Read it with [`held_bytes`](Self::held_bytes) (also the
/// `sluice_record_memory_bytes` gauge): it is what the records in the
/// buffer keep alive, to compare with the bytes the buffer charges them.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct RecordMemory {
    /// Bytes of copies alive. Relaxed: a statistic; each copy adds its
    /// size once and subtracts it once, so the sum is exact once quiet.
    held: AtomicU64,
    /// Copies alive.
    copies: AtomicU64,
    /// Records compacted so far.
    compacted: AtomicU64,
}

impl RecordMemory {
    /// Bytes of message copies (and compacted copies) that records still
    /// reference: the memory the engine holds for record bytes.
    pub fn held_bytes(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// How many such copies are alive.
    pub fn copies(&self) -> u64 {
        self.copies.load(Ordering::Relaxed)
    }

    /// How many records were compacted so far (moved out of their batch's copy).
    pub fn compacted_records(&self) -> u64 {
        self.compacted.load(Ordering::Relaxed)
    }

    /// A counted copy of `bytes`, the owner of the slices taken from it.
    pub(crate) fn copy(self: &Arc<Self>, bytes: &[u8]) -> Bytes {
        self.own(bytes.to_vec())
    }

    /// `data` as a counted copy.
    pub(crate) fn own(self: &Arc<Self>, data: Vec<u8>) -> Bytes {
        let size = data.capacity() as u64;
        self.held.fetch_add(size, Ordering::Relaxed);
        self.copies.fetch_add(1, Ordering::Relaxed);
        Bytes::from_owner(Tracked {
            data,
            memory: self.clone(),
        })
    }
}

/// A counted copy, the owner of its records' slices. The alignment gives
/// its reference count (kept next to it by `Bytes::from_owner`) a cache
/// line of its own: counts of successive batches allocated side by side
/// shared a line, which the session's increments for one batch and the
/// sink worker's decrements for an earlier one kept bouncing between the
/// cores (false sharing).
#[repr(align(64))]
struct Tracked {
    data: Vec<u8>,
    memory: Arc<RecordMemory>,
}

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.memory
            .held
            .fetch_sub(self.data.capacity() as u64, Ordering::Relaxed);
        self.memory.copies.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Moves `records`' keys and payloads into one new counted allocation of
/// their total size (so they no longer keep their batch's copy alive).
/// Records without bytes are left as they are.
pub(crate) fn compact<'a>(
    memory: &Arc<RecordMemory>,
    records: impl IntoIterator<Item = &'a mut EngineRecord>,
) {
    let mut records: Vec<&mut EngineRecord> = records.into_iter().collect();
    let total: usize = records.iter().map(|r| r.held_len()).sum();
    if total == 0 {
        return;
    }
    let mut data = Vec::with_capacity(total);
    for r in &records {
        r.write_parts(&mut data);
    }
    let own = memory.own(data);
    let mut at = 0;
    for r in &mut records {
        at = r.take_parts(&own, at);
    }
    debug_assert_eq!(at, total);
    memory
        .compacted
        .fetch_add(records.len() as u64, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_counted_until_their_last_slice_is_dropped() {
        let memory = Arc::new(RecordMemory::default());
        let copy = memory.copy(&[7u8; 1000]);
        let a = copy.slice(0..10);
        let b = copy.slice(10..20);
        drop(copy);
        assert_eq!(memory.held_bytes(), 1000);
        assert_eq!(memory.copies(), 1);
        drop(a);
        assert_eq!(memory.held_bytes(), 1000);
        drop(b);
        assert_eq!(memory.held_bytes(), 0);
        assert_eq!(memory.copies(), 0);
    }

    #[test]
    fn compacting_releases_the_batch_copy_and_keeps_the_content() {
        let memory = Arc::new(RecordMemory::default());
        let copy = memory.copy(&[b'x'; 10_000]);
        let mut kept = EngineRecord::from_payload(copy.slice(0..100));
        kept.key = copy.slice(100..104);
        let mut rewritten = EngineRecord::from_payload(copy.slice(200..300));
        rewritten.set_payload(&b"new"[..]);
        drop(copy);
        assert_eq!(memory.held_bytes(), 10_000);
        compact(&memory, [&mut kept, &mut rewritten]);
        // 100 + 4 for the first, 3 + 100 (rewritten and original) for the second.
        assert_eq!(memory.held_bytes(), 207);
        assert_eq!(memory.compacted_records(), 2);
        assert_eq!(&kept.payload()[..], &[b'x'; 100][..]);
        assert_eq!(&kept.key[..], b"xxxx");
        assert_eq!(&rewritten.payload()[..], b"new");
        assert_eq!(&rewritten.original_payload()[..], &[b'x'; 100][..]);
        drop(kept);
        assert_eq!(memory.held_bytes(), 207);
        drop(rewritten);
        assert_eq!(memory.held_bytes(), 0);
    }
}
