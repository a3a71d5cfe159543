//! A stage's FIFO of ready records, kept as a queue of chunks.
//!
//! Why chunks: records enter a stage a batch at a time (an admitted batch,
//! a forwarded batch) and leave a batch at a time (`next_batch`). Keeping
//! each incoming `Vec` as it is means a record is written once, when it is
//! admitted, and then travels from stage to stage by moving `Vec`s, not
//! records: a forward is O(1), and a take hands over whole chunks and
//! copies in bulk only where a batch boundary falls inside a chunk. (A flat
//! `VecDeque` of records moved every record one by one on every hop; at
//! ~128 bytes a record that was the largest single cost of the stage
//! workers, see BENCHMARKS.md.)

use std::collections::VecDeque;

use crate::pending::PendingRecord;
use crate::record::BufferedRecord;

/// FIFO of records in chunks; no chunk is empty.
pub(crate) struct RecordQueue<T> {
    chunks: VecDeque<Chunk<T>>,
    /// Total records over all chunks (kept so `len` is O(1)).
    len: usize,
}

impl<T> Default for RecordQueue<T> {
    fn default() -> Self {
        Self {
            chunks: VecDeque::new(),
            len: 0,
        }
    }
}

/// Records queued together, with their total charged size (kept so that a
/// whole chunk is taken without reading each of its records).
struct Chunk<T> {
    records: Vec<BufferedRecord<T>>,
    /// The sum of the records' `size`s.
    bytes: u64,
    /// Bookkeeping not yet written into the records (all but their sizes),
    /// written when they are taken (see `Laid::fill`).
    fill: Option<PendingRecord>,
}

impl<T> Chunk<T> {
    fn new(records: Vec<BufferedRecord<T>>, fill: Option<PendingRecord>) -> Self {
        let bytes = records.iter().map(|r| u64::from(r.size)).sum();
        Self {
            records,
            bytes,
            fill,
        }
    }
}

/// A batch taken from the queue, its bookkeeping possibly still to write:
/// [`into_records`](Self::into_records) writes it, after the lock.
pub(crate) struct Taken<T> {
    records: Vec<BufferedRecord<T>>,
    /// The sum of their sizes.
    pub(crate) bytes: u64,
    /// Runs `start..start + len` of `records` whose bookkeeping is still to
    /// write; the first inline (a take is usually one chunk).
    first_fill: Option<(usize, usize, PendingRecord)>,
    more_fills: Vec<(usize, usize, PendingRecord)>,
}

impl<T> Taken<T> {
    /// How many records.
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    fn note_fill(&mut self, start: usize, len: usize, fill: Option<PendingRecord>) {
        if let Some(f) = fill {
            match self.first_fill {
                None => self.first_fill = Some((start, len, f)),
                Some(_) => self.more_fills.push((start, len, f)),
            }
        }
    }

    /// The records, their bookkeeping written.
    pub(crate) fn into_records(mut self) -> Vec<BufferedRecord<T>> {
        for (start, len, f) in self.first_fill.iter().chain(&self.more_fills) {
            f.apply(&mut self.records[*start..*start + *len]);
        }
        self.records
    }
}

/// Capacity of a chunk started for single records (retries, put-backs).
const SMALL_CHUNK: usize = 16;

/// Chunks are merged into one batch (copied) only while both the batch so
/// far and the next chunk have at most this many records: small chunks
/// (sources sending a few records at a time) still make full batches,
/// large ones are handed out as they are.
const MERGE_MAX: usize = 64;

impl<T> RecordQueue<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one record.
    pub(crate) fn push_back(&mut self, r: BufferedRecord<T>) {
        let size = u64::from(r.size);
        match self.chunks.back_mut() {
            Some(last) if last.fill.is_none() && last.records.len() < last.records.capacity() => {
                last.records.push(r);
                last.bytes += size;
            }
            _ => {
                let mut records = Vec::with_capacity(SMALL_CHUNK);
                records.push(r);
                self.chunks.push_back(Chunk {
                    records,
                    bytes: size,
                    fill: None,
                });
            }
        }
        self.len += 1;
    }

    /// Appends a whole batch, in order, without moving its records;
    /// `bytes` is the sum of their sizes (the caller has just counted it);
    /// `fill`, the bookkeeping still to write into them when taken.
    pub(crate) fn push_chunk(
        &mut self,
        records: Vec<BufferedRecord<T>>,
        bytes: u64,
        fill: Option<PendingRecord>,
    ) {
        debug_assert_eq!(
            bytes,
            records.iter().map(|r| u64::from(r.size)).sum::<u64>()
        );
        if records.is_empty() {
            return;
        }
        self.len += records.len();
        self.chunks.push_back(Chunk {
            records,
            bytes,
            fill,
        });
    }

    /// The records, front to back (their sizes are always written; other
    /// bookkeeping may not be yet).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &BufferedRecord<T>> {
        self.chunks.iter().flat_map(|c| &c.records)
    }

    /// The sum of the queued records' sizes.
    pub(crate) fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.bytes).sum()
    }

    /// Removes and returns a batch from the front: at most `max_records`
    /// records and `max_bytes` bytes (but at least one record when any is
    /// queued, whatever its size), in order, and their total size.
    ///
    /// Queued chunks are taken whole while they fit (small ones merged, up
    /// to [`MERGE_MAX`] records, large ones one per batch); a chunk is split
    /// only when it is the first and alone exceeds the limits. So a batch
    /// may stop short of the limits while records are still queued: the
    /// next take gets them. (Filling a batch up to the limits from parts of
    /// several chunks copied every record into a fresh allocation, and the
    /// allocator returned and re-faulted those pages on every batch: with
    /// one transform stage that cost a third of the engine's throughput,
    /// see BENCHMARKS.md.)
    pub(crate) fn take_batch(&mut self, max_records: usize, max_bytes: u64) -> Taken<T> {
        let mut taken = Taken {
            records: Vec::new(),
            bytes: 0,
            first_fill: None,
            more_fills: Vec::new(),
        };
        if max_records == 0 {
            return taken;
        }
        let mut out: Vec<BufferedRecord<T>> = Vec::new();
        let mut bytes = 0u64;
        while let Some(chunk) = self.chunks.front() {
            let room = max_records - out.len();
            // How much of this chunk fits after what is already taken: all
            // of it, known from its totals (the common case, no record
            // read), or a prefix counted record by record.
            let (fit, fit_bytes) =
                if chunk.records.len() <= room && bytes.saturating_add(chunk.bytes) <= max_bytes {
                    (chunk.records.len(), chunk.bytes)
                } else {
                    let mut fit = 0;
                    let mut fit_bytes = 0u64;
                    for r in chunk.records.iter().take(room) {
                        let size = u64::from(r.size);
                        if out.len() + fit > 0 && bytes + fit_bytes + size > max_bytes {
                            break;
                        }
                        fit += 1;
                        fit_bytes += size;
                    }
                    (fit, fit_bytes)
                };
            if !out.is_empty()
                && (fit < chunk.records.len() || out.len().max(chunk.records.len()) > MERGE_MAX)
            {
                // Would need a split, or would copy a large chunk: leave the
                // chunk for the next batch.
                break;
            }
            let Some(chunk) = self.chunks.pop_front() else {
                break;
            };
            let mut records = chunk.records;
            let fill = chunk.fill;
            let split = fit < records.len();
            if split {
                // The first chunk alone is too large: cut its tail into
                // pieces of `fit` records, from the back, and queue them in
                // order. Each record is copied at most once, however many
                // batches the chunk makes (cutting only the first batch off
                // would copy the rest again on every take).
                let mut pieces = Vec::new();
                while records.len() > fit {
                    let at = fit.max((records.len() - 1) / fit * fit);
                    pieces.push(Chunk::new(records.split_off(at), fill.map(|f| f.from(at))));
                }
                for piece in pieces {
                    self.chunks.push_front(piece);
                }
            }
            bytes += fit_bytes;
            taken.note_fill(out.len(), records.len(), fill);
            if out.is_empty() {
                out = records;
            } else {
                out.append(&mut records);
            }
            if split || out.len() >= max_records {
                break;
            }
        }
        self.len -= out.len();
        taken.records = out;
        taken.bytes = bytes;
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{PipelineId, SourceId, StageId};

    fn rec(seq: u64) -> BufferedRecord<u64> {
        BufferedRecord {
            payload: seq,
            seq,
            source: SourceId(0),
            pipeline: PipelineId(0),
            stage: StageId(0),
            size: 1,
            buffered_at: std::time::Instant::now(),
            retry: None,
        }
    }

    fn seqs(v: &[BufferedRecord<u64>]) -> Vec<u64> {
        v.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn whole_chunks_are_taken_and_only_a_too_large_first_one_is_split() {
        let mut q = RecordQueue::default();
        q.push_chunk((1..=5).map(rec).collect(), 5, None);
        q.push_chunk(Vec::new(), 0, None);
        q.push_back(rec(6));
        q.push_back(rec(7));
        q.push_chunk((8..=10).map(rec).collect(), 3, None);
        assert_eq!(q.len(), 10);
        let all: Vec<u64> = q.iter().map(|r| r.seq).collect();
        assert_eq!(all, (1..=10).collect::<Vec<_>>());
        // The first chunk alone is larger than 3: split.
        assert_eq!(
            seqs(&q.take_batch(3, u64::MAX).into_records()),
            vec![1, 2, 3]
        );
        // [4, 5] fits whole, [6, 7] would need a split: stop short.
        assert_eq!(seqs(&q.take_batch(3, u64::MAX).into_records()), vec![4, 5]);
        // Byte limit (1 byte per record): [6, 7] and [8, 9, 10] fit in 5.
        let taken = q.take_batch(100, 5);
        let bytes = taken.bytes;
        assert_eq!(
            (seqs(&taken.into_records()), bytes),
            (vec![6, 7, 8, 9, 10], 5)
        );
        assert!(q.is_empty());
        assert!(q.take_batch(3, 3).into_records().is_empty());
        // At least one record, whatever its size.
        q.push_back(rec(11));
        assert_eq!(seqs(&q.take_batch(1, 0).into_records()), vec![11]);
    }

    #[test]
    fn a_large_chunk_is_cut_into_batch_sized_pieces_once() {
        let mut q = RecordQueue::default();
        q.push_chunk((1..=10).map(rec).collect(), 10, None);
        assert_eq!(
            seqs(&q.take_batch(3, u64::MAX).into_records()),
            vec![1, 2, 3]
        );
        // The rest now waits as pieces of 3 (4–6, 7–9) and 1 (10).
        let pieces: Vec<usize> = q.chunks.iter().map(|c| c.records.len()).collect();
        assert_eq!(pieces, vec![3, 3, 1]);
        assert_eq!(
            seqs(&q.take_batch(3, u64::MAX).into_records()),
            vec![4, 5, 6]
        );
        assert_eq!(
            seqs(&q.take_batch(100, u64::MAX).into_records()),
            vec![7, 8, 9, 10]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn bookkeeping_left_to_write_is_written_when_taken_even_split() {
        let fill = PendingRecord {
            first_seq: 100,
            source: SourceId(3),
            pipeline: PipelineId(1),
            stage: StageId(2),
            now: std::time::Instant::now(),
        };
        let mut q = RecordQueue::default();
        q.push_chunk((0..10).map(|_| rec(0)).collect(), 10, Some(fill));
        q.push_back(rec(7)); // not appended to a chunk still to fill
        let first = q.take_batch(4, u64::MAX).into_records();
        assert_eq!(seqs(&first), vec![100, 101, 102, 103]);
        assert!(
            first
                .iter()
                .all(|r| r.source == SourceId(3) && r.stage == StageId(2))
        );
        // The pieces (4, 2) and the single record merge into one batch.
        let rest = q.take_batch(100, u64::MAX).into_records();
        assert_eq!(seqs(&rest), vec![104, 105, 106, 107, 108, 109, 7]);
        assert!(q.is_empty());
    }

    proptest::proptest! {
        /// Any interleaving of pushes and takes behaves like a plain FIFO,
        /// every batch within its limits (or a single record), and a take
        /// from a non-empty queue never comes back empty.
        #[test]
        fn behaves_like_a_fifo(ops in proptest::collection::vec((0u8..3, 0usize..40, 0u64..60), 0..60)) {
            let mut q = RecordQueue::default();
            let mut model: VecDeque<u64> = VecDeque::new();
            let mut next = 0u64;
            for (op, n, max_bytes) in ops {
                match op {
                    0 => {
                        let chunk: Vec<_> = (next..next + n as u64).map(rec).collect();
                        model.extend(next..next + n as u64);
                        next += n as u64;
                        q.push_chunk(chunk, n as u64, None);
                    }
                    1 => {
                        q.push_back(rec(next));
                        model.push_back(next);
                        next += 1;
                    }
                    _ => {
                        let taken = q.take_batch(n, max_bytes);
                        let bytes = taken.bytes;
                        let got = seqs(&taken.into_records());
                        proptest::prop_assert_eq!(bytes, got.len() as u64);
                        proptest::prop_assert!(got.len() <= n);
                        proptest::prop_assert!(got.len() as u64 <= max_bytes || got.len() == 1);
                        if n > 0 && !model.is_empty() {
                            proptest::prop_assert!(!got.is_empty());
                        }
                        let want: Vec<u64> = model.drain(..got.len()).collect();
                        proptest::prop_assert_eq!(got, want);
                    }
                }
                proptest::prop_assert_eq!(q.len(), model.len());
                proptest::prop_assert!(q.chunks.iter().all(|c| !c.records.is_empty()));
                proptest::prop_assert_eq!(q.bytes(), q.iter().map(|r| u64::from(r.size)).sum::<u64>());
            }
        }
    }
}
