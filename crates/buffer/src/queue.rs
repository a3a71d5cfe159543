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

use crate::record::BufferedRecord;

/// FIFO of records in chunks; no chunk is empty.
pub(crate) struct RecordQueue<T> {
    chunks: VecDeque<Vec<BufferedRecord<T>>>,
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

/// Capacity of a chunk started for single records (retries, put-backs).
const SMALL_CHUNK: usize = 16;

impl<T> RecordQueue<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one record.
    pub(crate) fn push_back(&mut self, r: BufferedRecord<T>) {
        match self.chunks.back_mut() {
            Some(last) if last.len() < last.capacity() => last.push(r),
            _ => {
                let mut chunk = Vec::with_capacity(SMALL_CHUNK);
                chunk.push(r);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    /// Appends a whole batch, in order, without moving its records.
    pub(crate) fn push_chunk(&mut self, chunk: Vec<BufferedRecord<T>>) {
        if chunk.is_empty() {
            return;
        }
        self.len += chunk.len();
        self.chunks.push_back(chunk);
    }

    /// The records, front to back.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &BufferedRecord<T>> {
        self.chunks.iter().flatten()
    }

    /// Removes and returns the first `n` records (`n ≤ len`), in order.
    pub(crate) fn take_front(&mut self, n: usize) -> Vec<BufferedRecord<T>> {
        debug_assert!(n <= self.len);
        let mut out: Vec<BufferedRecord<T>> = Vec::new();
        while out.len() < n {
            let Some(mut chunk) = self.chunks.pop_front() else {
                break;
            };
            let want = n - out.len();
            if chunk.len() > want {
                // The boundary falls inside this chunk: keep its tail queued.
                let tail = chunk.split_off(want);
                self.chunks.push_front(tail);
            }
            if out.is_empty() {
                out = chunk;
            } else {
                // Grow once to the exact size: doubling would also cross
                // malloc's mmap threshold (128 KiB = 1024 records) for the
                // usual batch of ~1000, and page-fault on every batch.
                out.reserve_exact(n - out.len());
                out.append(&mut chunk);
            }
        }
        self.len -= out.len();
        out
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
    fn fifo_across_chunks_and_single_pushes() {
        let mut q = RecordQueue::default();
        q.push_chunk((1..=5).map(rec).collect());
        q.push_chunk(Vec::new());
        q.push_back(rec(6));
        q.push_back(rec(7));
        q.push_chunk((8..=10).map(rec).collect());
        assert_eq!(q.len(), 10);
        assert_eq!(
            q.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(seqs(&q.take_front(3)), vec![1, 2, 3]);
        assert_eq!(seqs(&q.take_front(4)), vec![4, 5, 6, 7]);
        assert_eq!(q.len(), 3);
        assert_eq!(seqs(&q.take_front(3)), vec![8, 9, 10]);
        assert!(q.is_empty());
        assert!(q.take_front(0).is_empty());
    }

    proptest::proptest! {
        /// Any interleaving of pushes and takes behaves like a plain FIFO.
        #[test]
        fn behaves_like_a_fifo(ops in proptest::collection::vec((0u8..3, 0usize..40), 0..60)) {
            let mut q = RecordQueue::default();
            let mut model: VecDeque<u64> = VecDeque::new();
            let mut next = 0u64;
            for (op, n) in ops {
                match op {
                    0 => {
                        let chunk: Vec<_> = (next..next + n as u64).map(rec).collect();
                        model.extend(next..next + n as u64);
                        next += n as u64;
                        q.push_chunk(chunk);
                    }
                    1 => {
                        q.push_back(rec(next));
                        model.push_back(next);
                        next += 1;
                    }
                    _ => {
                        let n = n.min(model.len());
                        let got = seqs(&q.take_front(n));
                        let want: Vec<u64> = model.drain(..n).collect();
                        proptest::prop_assert_eq!(got, want);
                    }
                }
                proptest::prop_assert_eq!(q.len(), model.len());
                proptest::prop_assert!(q.chunks.iter().all(|c| !c.is_empty()));
            }
        }
    }
}
