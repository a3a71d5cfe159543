//! The two layouts admitted records travel in, from `admit` through a
//! stage's queue to the batch a consumer takes.
//!
//! Why two: a [`BufferedRecord`] is the payload plus 48 bytes of
//! bookkeeping. A producer that hands in a `Vec<T>` (a [`Producer`]'s
//! usual batch) has its `Vec` queued as it is, numbered by its first
//! record, and a consumer that takes it whole receives it as it is and
//! completes it as one run: nothing is written per record on either core.
//! Laying such a batch out as `BufferedRecord`s wrote every record once
//! more on the producer's core and read it again on the consumer's; with
//! records of 100 bytes that was where sluice lost to a tokio `mpsc` of
//! `Vec`s (BENCHMARKS.md, "sluice-buffer through the handles"). A batch
//! built into the record layout ([`Pending::push`], the engine's decoder)
//! stays in it, so the engine's stages get `BufferedRecord`s without a copy.
//!
//! [`Producer`]: crate::Producer
//! [`Pending::push`]: crate::Pending::push

use crate::pending::PendingRecord;
use crate::record::BufferedRecord;

/// Records in one of the two layouts, with the bookkeeping still to write.
#[derive(Debug)]
pub(crate) enum Layout<T> {
    /// Payloads as the producer sent them, each charged `size_of(payload)`
    /// (the same function at admission and afterwards: a payload is not
    /// changed while the buffer holds it in this layout), their bookkeeping
    /// kept once for all: record `i` is `at.first_seq + i`.
    Payloads {
        payloads: Vec<T>,
        size_of: fn(&T) -> usize,
        at: PendingRecord,
    },
    /// Records laid out, their sizes written; the rest of their bookkeeping
    /// is written already (`fill` `None`) or still to write from `fill`
    /// (a built batch, written when it is taken: see `PendingRecord::apply`).
    Records {
        records: Vec<BufferedRecord<T>>,
        fill: Option<PendingRecord>,
    },
}

impl<T> Layout<T> {
    /// Records whose bookkeeping is written.
    pub(crate) fn records(records: Vec<BufferedRecord<T>>) -> Self {
        Layout::Records {
            records,
            fill: None,
        }
    }

    /// The number of records.
    pub(crate) fn len(&self) -> usize {
        match self {
            Layout::Payloads { payloads, .. } => payloads.len(),
            Layout::Records { records, .. } => records.len(),
        }
    }

    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Renumbers the records from `first_seq`.
    pub(crate) fn number_from(&mut self, first_seq: u64) {
        match self {
            Layout::Payloads { at, .. } => at.first_seq = first_seq,
            Layout::Records {
                fill: Some(fill), ..
            } => fill.first_seq = first_seq,
            Layout::Records {
                records,
                fill: None,
            } => {
                for (i, r) in records.iter_mut().enumerate() {
                    r.seq = first_seq + i as u64;
                }
            }
        }
    }

    /// The charged size of each record from the `from`-th on, in order.
    pub(crate) fn sizes_from(&self, from: usize) -> impl Iterator<Item = u32> + '_ {
        // One of the two is empty.
        let (payloads, size_of): (&[T], fn(&T) -> usize) = match self {
            Layout::Payloads {
                payloads, size_of, ..
            } => (payloads.get(from..).unwrap_or_default(), *size_of),
            Layout::Records { .. } => (&[], |_| 0),
        };
        let records: &[BufferedRecord<T>] = match self {
            Layout::Records { records, .. } => records.get(from..).unwrap_or_default(),
            Layout::Payloads { .. } => &[],
        };
        payloads
            .iter()
            .map(move |p| charged(size_of(p)))
            .chain(records.iter().map(|r| r.size))
    }

    /// The charged size of each record, in order.
    pub(crate) fn sizes(&self) -> impl Iterator<Item = u32> + '_ {
        self.sizes_from(0)
    }

    /// An empty layout of the same kind, numbered from record `from` of this one.
    fn empty_from(&self, from: usize) -> Self {
        match self {
            Layout::Payloads { size_of, at, .. } => Layout::Payloads {
                payloads: Vec::new(),
                size_of: *size_of,
                at: at.from(from),
            },
            Layout::Records { fill, .. } => Layout::Records {
                records: Vec::new(),
                fill: fill.map(|f| f.from(from)),
            },
        }
    }

    /// Splits off the records from the `from`-th on (`from` ≤ `len`).
    pub(crate) fn split_off(&mut self, from: usize) -> Self {
        match self {
            Layout::Payloads {
                payloads,
                size_of,
                at,
            } => Layout::Payloads {
                payloads: payloads.split_off(from),
                size_of: *size_of,
                at: at.from(from),
            },
            Layout::Records { records, fill } => Layout::Records {
                records: records.split_off(from),
                fill: fill.map(|f| f.from(from)),
            },
        }
    }

    /// Removes and returns the first `n` records, copying whichever part
    /// is shorter (so a long tail keeps its allocation).
    pub(crate) fn split_head(&mut self, n: usize) -> Self {
        if n == 0 {
            return self.empty_from(0);
        }
        if n >= self.len() {
            let empty = self.empty_from(self.len());
            return std::mem::replace(self, empty);
        }
        if n < self.len() - n {
            let head = match self {
                Layout::Payloads {
                    payloads,
                    size_of,
                    at,
                } => Layout::Payloads {
                    payloads: payloads.drain(..n).collect(),
                    size_of: *size_of,
                    at: *at,
                },
                Layout::Records { records, fill } => Layout::Records {
                    records: records.drain(..n).collect(),
                    fill: *fill,
                },
            };
            // What stays starts `n` records later.
            match self {
                Layout::Payloads { at, .. } => *at = at.from(n),
                Layout::Records { fill, .. } => *fill = fill.map(|f| f.from(n)),
            }
            return head;
        }
        let tail = self.split_off(n);
        std::mem::replace(self, tail)
    }

    /// The records, laid out with their bookkeeping written.
    pub(crate) fn into_records(self) -> Vec<BufferedRecord<T>> {
        let mut out = Vec::new();
        self.append_to(&mut out);
        out
    }

    /// Appends the records to `out`, laid out, their bookkeeping written.
    pub(crate) fn append_to(self, out: &mut Vec<BufferedRecord<T>>) {
        match self {
            Layout::Payloads {
                payloads,
                size_of,
                at,
            } => {
                out.reserve(payloads.len());
                out.extend(
                    payloads
                        .into_iter()
                        .enumerate()
                        .map(|(i, payload)| at.record(i, payload, size_of)),
                );
            }
            Layout::Records { mut records, fill } => {
                let start = out.len();
                if out.is_empty() {
                    *out = records;
                } else {
                    out.append(&mut records);
                }
                if let Some(f) = fill {
                    f.apply(&mut out[start..]);
                }
            }
        }
    }
}

/// The size a payload is charged for; u32::MAX stands for "this size or
/// more" (4 GiB: larger than any byte limit can take, so refused `TooLarge`).
#[inline]
pub(crate) fn charged(size: usize) -> u32 {
    u32::try_from(size).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{PipelineId, SourceId, StageId};

    fn at() -> PendingRecord {
        PendingRecord {
            first_seq: 10,
            source: SourceId(1),
            pipeline: PipelineId(0),
            stage: StageId(2),
            now: std::time::Instant::now(),
        }
    }

    fn payloads(n: u8) -> Layout<Vec<u8>> {
        Layout::Payloads {
            payloads: (1..=n).map(|i| vec![0; i as usize]).collect(),
            size_of: Vec::len,
            at: at(),
        }
    }

    fn seqs_and_sizes(l: Layout<Vec<u8>>) -> Vec<(u64, u32)> {
        l.into_records().iter().map(|r| (r.seq, r.size)).collect()
    }

    #[test]
    fn splits_keep_order_numbers_and_sizes_in_every_layout() {
        let laid = || Layout::records(payloads(5).into_records());
        let built = || match laid() {
            Layout::Records { records, .. } => Layout::Records {
                records,
                fill: Some(at()),
            },
            other => other,
        };
        for mut l in [payloads(5), laid(), built()] {
            assert_eq!(l.sizes().collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
            assert_eq!(l.sizes_from(3).collect::<Vec<_>>(), vec![4, 5]);
            assert_eq!(l.sizes_from(9).count(), 0);
            let head = l.split_head(1); // the short head copied
            assert_eq!(seqs_and_sizes(head), vec![(10, 1)]);
            let head = l.split_head(3); // the short tail copied
            assert_eq!(seqs_and_sizes(head), vec![(11, 2), (12, 3), (13, 4)]);
            assert!(l.split_head(0).is_empty());
            let tail = l.split_off(0);
            assert!(l.is_empty());
            assert_eq!(seqs_and_sizes(tail), vec![(14, 5)]);
        }
        let mut l = payloads(2);
        l.number_from(100);
        assert_eq!(seqs_and_sizes(l), vec![(100, 1), (101, 2)]);
    }

    #[test]
    fn layouts_append_to_one_batch_each_numbered_by_its_own_bookkeeping() {
        let mut out = payloads(1).into_records();
        let mut later = payloads(2);
        later.number_from(15);
        later.append_to(&mut out);
        let got: Vec<_> = out
            .iter()
            .map(|r| (r.seq, r.source, r.stage, r.size))
            .collect();
        assert_eq!(
            got,
            vec![
                (10, SourceId(1), StageId(2), 1),
                (15, SourceId(1), StageId(2), 1),
                (16, SourceId(1), StageId(2), 2),
            ]
        );
    }
}
