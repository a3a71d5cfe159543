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

use crate::layout::Layout;
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

/// Records queued together, in the layout they came in, with their total
/// charged size (kept so that a whole chunk is taken without reading each
/// of its records).
struct Chunk<T> {
    layout: Layout<T>,
    /// The sum of the records' sizes.
    bytes: u64,
}

impl<T> Chunk<T> {
    fn new(layout: Layout<T>) -> Self {
        let bytes = layout.sizes().map(u64::from).sum();
        Self { layout, bytes }
    }
}

/// A batch taken from the queue: its chunks as they were queued (usually
/// one), their bookkeeping still to write; [`into_records`](Self::into_records)
/// lays them out and writes it, [`into_layout`](Self::into_layout) keeps a
/// single chunk as it is. Both after the lock.
pub(crate) struct Taken<T> {
    /// The first chunk (or piece of one) taken.
    first: Layout<T>,
    /// Small chunks merged after it (see [`MERGE_MAX`]).
    rest: Vec<Layout<T>>,
    len: usize,
    /// The sum of their sizes.
    pub(crate) bytes: u64,
}

impl<T> Taken<T> {
    /// How many records.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The records, laid out, their bookkeeping written.
    pub(crate) fn into_records(self) -> Vec<BufferedRecord<T>> {
        let mut out = self.first.into_records();
        for part in self.rest {
            part.append_to(&mut out);
        }
        out
    }

    /// The batch as one layout: the chunk as it was queued when it is one
    /// (no record touched), else laid out.
    pub(crate) fn into_layout(self) -> Layout<T> {
        if self.rest.is_empty() {
            self.first
        } else {
            Layout::records(self.into_records())
        }
    }
}

/// Capacity of a chunk started for single records (retries, put-backs).
const SMALL_CHUNK: usize = 16;

/// Chunks are merged into one batch only while both the batch so far and
/// the next chunk have at most this many records: small chunks (sources
/// sending a few records at a time) still make full batches, large ones
/// are handed out as they are.
const MERGE_MAX: usize = 64;

impl<T> RecordQueue<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one record (its bookkeeping written).
    pub(crate) fn push_back(&mut self, r: BufferedRecord<T>) {
        let size = u64::from(r.size);
        if let Some(Chunk {
            layout:
                Layout::Records {
                    records,
                    fill: None,
                },
            bytes,
        }) = self.chunks.back_mut()
            && records.len() < records.capacity()
        {
            records.push(r);
            *bytes += size;
        } else {
            let mut records = Vec::with_capacity(SMALL_CHUNK);
            records.push(r);
            self.chunks.push_back(Chunk {
                layout: Layout::records(records),
                bytes: size,
            });
        }
        self.len += 1;
    }

    /// Appends a whole batch, in order, as it is; `bytes` is the sum of
    /// its sizes (the caller has just counted it).
    pub(crate) fn push_chunk(&mut self, layout: Layout<T>, bytes: u64) {
        debug_assert_eq!(bytes, layout.sizes().map(u64::from).sum::<u64>());
        if layout.is_empty() {
            return;
        }
        self.len += layout.len();
        self.chunks.push_back(Chunk { layout, bytes });
    }

    /// The charged size of each queued record, front to back.
    pub(crate) fn sizes(&self) -> impl Iterator<Item = u32> + '_ {
        self.chunks.iter().flat_map(|c| c.layout.sizes())
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
            first: Layout::records(Vec::new()),
            rest: Vec::new(),
            len: 0,
            bytes: 0,
        };
        if max_records == 0 {
            return taken;
        }
        while let Some(chunk) = self.chunks.front() {
            let room = max_records - taken.len;
            let n = chunk.layout.len();
            // How much of this chunk fits after what is already taken: all
            // of it, known from its totals (the common case, no record
            // read), or a prefix counted record by record.
            let (fit, fit_bytes) =
                if n <= room && taken.bytes.saturating_add(chunk.bytes) <= max_bytes {
                    (n, chunk.bytes)
                } else {
                    let mut fit = 0;
                    let mut fit_bytes = 0u64;
                    for size in chunk.layout.sizes().take(room) {
                        let size = u64::from(size);
                        if taken.len + fit > 0 && taken.bytes + fit_bytes + size > max_bytes {
                            break;
                        }
                        fit += 1;
                        fit_bytes += size;
                    }
                    (fit, fit_bytes)
                };
            if taken.len > 0 && (fit < n || taken.len.max(n) > MERGE_MAX) {
                // Would need a split, or would copy a large chunk: leave the
                // chunk for the next batch.
                break;
            }
            let Some(chunk) = self.chunks.pop_front() else {
                break;
            };
            let mut layout = chunk.layout;
            let split = fit < n;
            if split {
                // The first chunk alone is too large: cut its tail into
                // pieces of `fit` records, from the back, and queue them in
                // order, in the chunk's layout. Each record is copied at
                // most once, however many batches the chunk makes (cutting
                // only the first batch off would copy the rest again on
                // every take).
                let mut pieces = Vec::new();
                while layout.len() > fit {
                    let at = fit.max((layout.len() - 1) / fit * fit);
                    pieces.push(Chunk::new(layout.split_off(at)));
                }
                for piece in pieces {
                    self.chunks.push_front(piece);
                }
            }
            taken.bytes += fit_bytes;
            if taken.len == 0 {
                taken.first = layout;
            } else {
                taken.rest.push(layout);
            }
            taken.len += fit;
            if split || taken.len >= max_records {
                break;
            }
        }
        self.len -= taken.len;
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pending::PendingRecord;
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

    fn at(first_seq: u64) -> PendingRecord {
        PendingRecord {
            first_seq,
            source: SourceId(3),
            pipeline: PipelineId(1),
            stage: StageId(2),
            now: std::time::Instant::now(),
        }
    }

    /// `seqs` as payloads, one byte each, numbered from their first.
    fn payloads(seqs: std::ops::Range<u64>) -> Layout<u64> {
        Layout::Payloads {
            at: at(seqs.start),
            payloads: seqs.collect(),
            size_of: |_| 1,
        }
    }

    fn records(seqs: std::ops::RangeInclusive<u64>) -> Layout<u64> {
        Layout::records(seqs.map(rec).collect())
    }

    fn seqs(taken: Taken<u64>) -> Vec<u64> {
        taken.into_records().iter().map(|r| r.seq).collect()
    }

    #[test]
    fn whole_chunks_are_taken_and_only_a_too_large_first_one_is_split() {
        let mut q = RecordQueue::default();
        q.push_chunk(records(1..=5), 5);
        q.push_chunk(Layout::records(Vec::new()), 0);
        q.push_back(rec(6));
        q.push_back(rec(7));
        q.push_chunk(records(8..=10), 3);
        assert_eq!(q.len(), 10);
        assert_eq!(q.sizes().count(), 10);
        // The first chunk alone is larger than 3: split.
        assert_eq!(seqs(q.take_batch(3, u64::MAX)), vec![1, 2, 3]);
        // [4, 5] fits whole, [6, 7] would need a split: stop short.
        assert_eq!(seqs(q.take_batch(3, u64::MAX)), vec![4, 5]);
        // Byte limit (1 byte per record): [6, 7] and [8, 9, 10] fit in 5.
        let taken = q.take_batch(100, 5);
        let bytes = taken.bytes;
        assert_eq!((seqs(taken), bytes), (vec![6, 7, 8, 9, 10], 5));
        assert!(q.is_empty());
        assert!(seqs(q.take_batch(3, 3)).is_empty());
        // At least one record, whatever its size.
        q.push_back(rec(11));
        assert_eq!(seqs(q.take_batch(1, 0)), vec![11]);
    }

    #[test]
    fn a_large_chunk_is_cut_into_batch_sized_pieces_once_in_its_layout() {
        let mut q = RecordQueue::default();
        q.push_chunk(payloads(1..11), 10);
        assert_eq!(seqs(q.take_batch(3, u64::MAX)), vec![1, 2, 3]);
        // The rest now waits as pieces of 3 (4–6, 7–9) and 1 (10), still
        // payloads numbered by their first.
        let pieces: Vec<usize> = q.chunks.iter().map(|c| c.layout.len()).collect();
        assert_eq!(pieces, vec![3, 3, 1]);
        assert!(
            q.chunks
                .iter()
                .all(|c| matches!(c.layout, Layout::Payloads { .. }))
        );
        assert_eq!(seqs(q.take_batch(3, u64::MAX)), vec![4, 5, 6]);
        // A piece taken alone stays as it was queued.
        let Layout::Payloads { payloads, at, .. } = q.take_batch(3, u64::MAX).into_layout() else {
            panic!("a single chunk taken whole is handed out as it is");
        };
        assert_eq!((payloads, at.first_seq), (vec![7, 8, 9], 7));
        assert_eq!(seqs(q.take_batch(100, u64::MAX)), vec![10]);
        assert!(q.is_empty());
    }

    #[test]
    fn bookkeeping_left_to_write_is_written_when_taken_even_split_or_merged() {
        let mut q = RecordQueue::default();
        q.push_chunk(
            Layout::Records {
                records: (0..10).map(|_| rec(0)).collect(),
                fill: Some(at(100)),
            },
            10,
        );
        q.push_back(rec(7)); // not appended to a chunk still to fill
        q.push_chunk(payloads(20..22), 2);
        let first = q.take_batch(4, u64::MAX).into_records();
        assert_eq!(
            first.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![100, 101, 102, 103]
        );
        assert!(
            first
                .iter()
                .all(|r| r.source == SourceId(3) && r.stage == StageId(2))
        );
        // The pieces (4, 2), the single record and the payloads merge into
        // one batch.
        let rest = q.take_batch(100, u64::MAX);
        assert!(matches!(rest.first, Layout::Records { .. }));
        assert_eq!(seqs(rest), vec![104, 105, 106, 107, 108, 109, 7, 20, 21]);
        assert!(q.is_empty());
    }

    proptest::proptest! {
        /// Any interleaving of pushes (in either layout) and takes behaves
        /// like a plain FIFO, every batch within its limits (or a single
        /// record), and a take from a non-empty queue never comes back empty.
        #[test]
        fn behaves_like_a_fifo(ops in proptest::collection::vec((0u8..4, 0usize..40, 0u64..60), 0..60)) {
            let mut q = RecordQueue::default();
            let mut model: VecDeque<u64> = VecDeque::new();
            let mut next = 1u64;
            for (op, n, max_bytes) in ops {
                match op {
                    0 => {
                        let chunk: Vec<_> = (next..next + n as u64).map(rec).collect();
                        model.extend(next..next + n as u64);
                        next += n as u64;
                        q.push_chunk(Layout::records(chunk), n as u64);
                    }
                    1 => {
                        q.push_chunk(payloads(next..next + n as u64), n as u64);
                        model.extend(next..next + n as u64);
                        next += n as u64;
                    }
                    2 => {
                        q.push_back(rec(next));
                        model.push_back(next);
                        next += 1;
                    }
                    _ => {
                        let taken = q.take_batch(n, max_bytes);
                        let bytes = taken.bytes;
                        proptest::prop_assert_eq!(bytes, taken.len() as u64);
                        let got = seqs(taken);
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
                proptest::prop_assert!(q.chunks.iter().all(|c| !c.layout.is_empty()));
                proptest::prop_assert_eq!(q.bytes(), q.sizes().map(u64::from).sum::<u64>());
            }
        }
    }
}
