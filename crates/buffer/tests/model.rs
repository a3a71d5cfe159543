//! Invariant 3 (no record lost or duplicated), invariants 1–2 (limits,
//! conservation) and 4 (no lost wake-up): random sequences of every
//! operation, checked against a plain model of which sequence numbers are
//! where, with `audit` after each step. Two producer handles take part:
//! their sends wait (registered at the limit that refused them) across
//! steps, so `audit` checks at every step that no waiting send sleeps on a
//! level that has the room it waits for.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::FutureExt;
use proptest::prelude::*;
use sluice_buffer::{
    BufferManager, BufferedRecord, Credit, DeadLetter, Limit, Limits, Pending, Producer,
    RetryPolicy, SendError, SourceId, StageId,
};

type Sent = (Producer<Vec<u8>>, Result<u64, SendError<Vec<u8>>>);

/// A producer handle of the model: idle, or with a send under way.
enum Slot {
    Idle(Producer<Vec<u8>>),
    Sending(Pin<Box<dyn Future<Output = Sent>>>),
}

#[derive(Debug, Clone)]
enum Op {
    Reserve {
        src: usize,
        records: u64,
        bytes: u64,
    },
    Release {
        src: usize,
    },
    Admit {
        src: usize,
        sizes: Vec<u8>,
        resend: u8,
    },
    Take {
        stage: usize,
        max: usize,
    },
    /// Take through a `Consumer` (a batch in the layout it was queued in),
    /// and complete it whole or hold its records.
    Receive {
        stage: usize,
        max: usize,
        whole: bool,
    },
    Forward {
        take: usize,
    },
    Complete {
        take: usize,
    },
    /// Complete as filtered out by a stage.
    Filter {
        take: usize,
    },
    Retry {
        take: usize,
    },
    FinishDead {
        take: usize,
    },
    /// Producer handle `p` sends `n` records of `size` bytes (or, with a
    /// send under way, that send is polled again).
    Send {
        p: usize,
        n: usize,
        size: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, 0..8u64, 0..400u64).prop_map(|(src, records, bytes)| Op::Reserve {
            src,
            records,
            bytes
        }),
        (0..3usize).prop_map(|src| Op::Release { src }),
        (0..3usize, prop::collection::vec(0..60u8, 0..12), 0..3u8)
            .prop_map(|(src, sizes, resend)| Op::Admit { src, sizes, resend }),
        (0..3usize, 1..8usize).prop_map(|(stage, max)| Op::Take { stage, max }),
        (0..3usize, 1..8usize, any::<bool>()).prop_map(|(stage, max, whole)| Op::Receive {
            stage,
            max,
            whole
        }),
        (0..6usize).prop_map(|take| Op::Forward { take }),
        (0..6usize).prop_map(|take| Op::Complete { take }),
        (0..6usize).prop_map(|take| Op::Filter { take }),
        (0..6usize).prop_map(|take| Op::Retry { take }),
        (0..6usize).prop_map(|take| Op::FinishDead { take }),
        (0..2usize, 0..12usize, 1..60u8).prop_map(|(p, n, size)| Op::Send { p, n, size }),
    ]
}

/// The plain model: per source, which sequence numbers were admitted,
/// delivered and dead-lettered, plus what the test currently holds.
#[derive(Default)]
struct Model {
    next_seq: HashMap<usize, u64>,
    admitted: HashMap<usize, BTreeSet<u64>>,
    finished: HashMap<usize, BTreeSet<u64>>,
    /// How each finished record ended, counted per source: delivered,
    /// filtered, dead-lettered.
    ends: HashMap<usize, [u64; 3]>,
}

const DELIVERED: usize = 0;
const FILTERED: usize = 1;
const DEAD_LETTERED: usize = 2;

struct Harness {
    buf: Arc<BufferManager<Vec<u8>>>,
    /// `s0`–`s2` (admitted directly), then the producers' `p0` and `p1`.
    sources: Vec<SourceId>,
    producers: Vec<Option<Slot>>,
    stages: Vec<StageId>,
    held: Vec<BufferedRecord<Vec<u8>>>,
    dead: Vec<DeadLetter<Vec<u8>>>,
    model: Model,
}

impl Harness {
    fn new() -> Self {
        let limits = Limits {
            global: Limit::new(20, 600),
            per_stage: Limit::new(10, 400),
            per_source: Limit::new(8, 300),
        };
        let buf = Arc::new(
            BufferManager::<Vec<u8>>::builder(limits)
                .retry(RetryPolicy {
                    max_retries: 2,
                    initial_backoff: Duration::ZERO,
                    max_backoff: Duration::ZERO,
                })
                .pipeline("a", ["a0", "a1"])
                .pipeline("b", ["b0"])
                .build()
                .unwrap(),
        );
        let a = buf.pipeline_by_name("a").unwrap().clone();
        let b = buf.pipeline_by_name("b").unwrap().clone();
        let mut sources = vec![
            buf.register_source("s0", a.id).unwrap(),
            buf.register_source("s1", a.id).unwrap(),
            buf.register_source("s2", b.id).unwrap(),
        ];
        let mut producers = Vec::new();
        for (name, pipeline) in [("p0", a.id), ("p1", b.id)] {
            let producer = buf.producers(pipeline).unwrap().producer(name).unwrap();
            sources.push(producer.source());
            producers.push(Some(Slot::Idle(producer)));
        }
        let stages = vec![a.stages[0], a.stages[1], b.stages[0]];
        Harness {
            buf,
            sources,
            producers,
            stages,
            held: Vec::new(),
            dead: Vec::new(),
            model: Model::default(),
        }
    }

    fn finish(&mut self, end: usize, records: impl IntoIterator<Item = (SourceId, u64)>) {
        for (src, seq) in records {
            let i = self.sources.iter().position(|s| *s == src).unwrap();
            self.model.ends.entry(i).or_default()[end] += 1;
            assert!(
                self.model.admitted[&i].contains(&seq),
                "finished a record never admitted: {i}/{seq}"
            );
            assert!(
                self.model.finished.entry(i).or_default().insert(seq),
                "record finished twice: {i}/{seq}"
            );
        }
    }

    /// Take up to `take` held records, end them through `end_with` (complete
    /// or filter), and record that end kind in the model.
    fn end_held<R>(
        &mut self,
        take: usize,
        end: usize,
        end_with: impl FnOnce(&BufferManager<Vec<u8>>, Vec<BufferedRecord<Vec<u8>>>) -> R,
    ) {
        let n = take.min(self.held.len());
        let recs: Vec<_> = self.held.drain(..n).collect();
        let keys: Vec<_> = recs.iter().map(|r| (r.source(), r.seq())).collect();
        end_with(&self.buf, recs);
        self.finish(end, keys);
    }

    /// Take up to `take` dead letters and complete them (dead-lettered).
    fn end_dead(&mut self, take: usize) {
        let n = take.min(self.dead.len());
        let dead: Vec<_> = self.dead.drain(..n).collect();
        let keys: Vec<_> = dead
            .iter()
            .map(|d| (d.record.source(), d.record.seq()))
            .collect();
        self.buf.complete_dead_letters(dead);
        self.finish(DEAD_LETTERED, keys);
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Reserve {
                src,
                records,
                bytes,
            } => {
                let before = self.buf.available(self.sources[src]).unwrap();
                let got = self
                    .buf
                    .reserve(self.sources[src], Credit::new(records, bytes))
                    .unwrap();
                assert!(got.records <= records && got.bytes <= bytes);
                assert!(got.records <= before.records && got.bytes <= before.bytes);
            }
            Op::Release { src } => {
                let r = self.buf.reserved(self.sources[src]).unwrap();
                assert_eq!(self.buf.release(self.sources[src], r).unwrap(), r);
            }
            Op::Admit { src, sizes, resend } => {
                let id = self.sources[src];
                let next = *self.model.next_seq.entry(src).or_insert(1);
                let first = next.saturating_sub(u64::from(resend)).max(1);
                let dup = (next - first) as usize;
                let reserved = self.buf.reserved(id).unwrap();
                let payloads: Vec<Vec<u8>> =
                    sizes.iter().map(|&n| vec![src as u8; n as usize]).collect();
                // Both layouts: a `Vec` (queued as it is, numbered by its
                // first record) and a built batch (laid out as pushed, its
                // bookkeeping written when taken).
                let payloads: Pending<Vec<u8>> = if resend % 2 == 0 {
                    payloads.into()
                } else {
                    payloads.into_iter().collect()
                };
                let new_sizes: Vec<u64> = sizes.iter().skip(dup).map(|&n| u64::from(n)).collect();
                let compliant = new_sizes.len() as u64 <= reserved.records
                    && new_sizes.iter().sum::<u64>() <= reserved.bytes;
                let n = payloads.len();
                let out = self.buf.admit(id, first, payloads).unwrap();
                assert_eq!(out.duplicates, dup.min(n));
                let rejected = out.rejected.as_ref().map_or(0, |r| r.records.len());
                assert_eq!(
                    out.duplicates + out.admitted + rejected,
                    n,
                    "every payload accounted for"
                );
                if compliant {
                    assert!(
                        out.rejected.is_none(),
                        "a source within its credits was rejected: {:?}",
                        out.rejected.map(|r| r.reason)
                    );
                }
                if let Some(r) = &out.rejected {
                    assert_eq!(r.first_seq, first + (out.duplicates + out.admitted) as u64);
                }
                let set = self.model.admitted.entry(src).or_default();
                for k in 0..out.admitted as u64 {
                    assert!(set.insert(next + k), "admitted twice");
                }
                self.model.next_seq.insert(src, next + out.admitted as u64);
                assert_eq!(out.admitted_through, next + out.admitted as u64 - 1);
            }
            Op::Take { stage, max } => {
                let b = self.buf.try_batch(self.stages[stage], max);
                assert!(b.len() <= max);
                self.held.extend(b);
            }
            Op::Receive { stage, max, whole } => {
                let consumer = self
                    .buf
                    .consumer(self.stages[stage])
                    .unwrap()
                    .with_batch_size(max);
                if let Ok(batch) = consumer.try_recv() {
                    assert!(!batch.is_empty() && batch.len() <= max);
                    assert_eq!(batch.bytes(), batch.iter().map(|r| r.size()).sum::<u64>());
                    assert!(batch.iter().all(|r| r.stage() == self.stages[stage]));
                    if whole {
                        let keys: Vec<_> = batch.iter().map(|r| (r.source(), r.seq())).collect();
                        consumer.complete(batch);
                        self.finish(DELIVERED, keys);
                    } else {
                        self.held.extend(batch.into_records());
                    }
                }
            }
            Op::Forward { take } => {
                // Forward held records of stage a0 to a1; a full a1 leaves the
                // rest pending, and dropping the future must put it back.
                let idx: Vec<usize> = (0..self.held.len())
                    .filter(|&i| self.held[i].stage() == self.stages[0])
                    .take(take)
                    .collect();
                let recs: Vec<_> = idx
                    .iter()
                    .rev()
                    .map(|&i| self.held.swap_remove(i))
                    .collect();
                let _ = self.buf.forward(recs, self.stages[1]).now_or_never();
            }
            Op::Complete { take } => {
                self.end_held(take, DELIVERED, BufferManager::complete);
            }
            Op::Filter { take } => {
                self.end_held(take, FILTERED, BufferManager::complete_filtered);
            }
            Op::Retry { take } => {
                let n = take.min(self.held.len());
                let recs: Vec<_> = self.held.drain(..n).collect();
                let dead = self.buf.retry(recs, "boom");
                for d in &dead {
                    assert_eq!(d.retries(), 2);
                    assert_eq!(&*d.error, "boom");
                }
                self.dead.extend(dead);
            }
            Op::FinishDead { take } => self.end_dead(take),
            Op::Send { p, n, size } => self.send(p, n, size),
        }
        if let Err(e) = self.buf.audit() {
            panic!("invariant broken: {e}");
        }
        // The workers' reading of a pipeline's pressure is flow control's:
        // the highest level any of its sources touches.
        let pressures = self.buf.pressures();
        for p in self.buf.pipelines() {
            let expected = pressures
                .iter()
                .filter(|(id, _)| self.buf.snapshot().sources[id.index()].pipeline == p.id)
                .map(|(_, pr)| pr.max())
                .fold(0.0, f64::max);
            assert_eq!(
                self.buf.pipeline_pressure(p.id),
                expected,
                "pipeline {}",
                p.name
            );
        }
    }

    /// Starts a send of producer `p` (or polls the one under way) once, and
    /// notes what its source has admitted since.
    fn send(&mut self, p: usize, n: usize, size: u8) {
        let slot = match self.producers[p].take() {
            Some(Slot::Idle(mut producer)) => {
                let batch: Pending<Vec<u8>> = if n.is_multiple_of(2) {
                    vec![vec![p as u8; size as usize]; n].into()
                } else {
                    std::iter::repeat_n(vec![p as u8; size as usize], n).collect()
                };
                Slot::Sending(Box::pin(async move {
                    let sent = producer.send(batch).await;
                    (producer, sent)
                }))
            }
            other => other.expect("a slot is never left empty"),
        };
        let Slot::Sending(mut send) = slot else {
            unreachable!("made a send above");
        };
        // Polled with a waker that does nothing: the model polls on its own
        // schedule, and `audit` checks the registration instead.
        self.producers[p] = Some(
            match send.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready((producer, sent)) => {
                    sent.expect("a send within the limits succeeds");
                    Slot::Idle(producer)
                }
                Poll::Pending => Slot::Sending(send),
            },
        );
        let i = 3 + p;
        let through = self.buf.admitted_through(self.sources[i]).unwrap();
        let next = *self.model.next_seq.entry(i).or_insert(1);
        let set = self.model.admitted.entry(i).or_default();
        for seq in next..=through {
            assert!(set.insert(seq), "admitted twice");
        }
        self.model.next_seq.insert(i, through + 1);
    }

    /// Whether every producer's send is done.
    fn sends_done(&self) -> bool {
        self.producers
            .iter()
            .all(|s| matches!(s, Some(Slot::Idle(_))))
    }

    /// Drives every record to completion and checks exactly-once.
    fn drain_all(&mut self) {
        // Unused reservations would hold their levels for good, and a
        // waiting send with them.
        for &id in &self.sources {
            let r = self.buf.reserved(id).unwrap();
            self.buf.release(id, r).unwrap();
        }
        for _ in 0..1000 {
            for p in 0..self.producers.len() {
                if !matches!(self.producers[p], Some(Slot::Idle(_))) {
                    self.send(p, 0, 1);
                }
            }
            self.end_held(usize::MAX, DELIVERED, BufferManager::complete);
            self.end_dead(usize::MAX);
            let mut any = false;
            for &s in &self.stages {
                let b = self.buf.try_batch(s, 100);
                any |= !b.is_empty();
                self.held.extend(b);
            }
            if !any && self.buf.in_engine() == 0 && self.sends_done() {
                break;
            }
        }
        assert!(self.sends_done(), "every waiting send got through");
        assert_eq!(self.buf.in_engine(), 0);
        for (i, &id) in self.sources.iter().enumerate() {
            let admitted = self.model.admitted.get(&i).cloned().unwrap_or_default();
            let finished = self.model.finished.get(&i).cloned().unwrap_or_default();
            assert_eq!(
                admitted, finished,
                "source {i}: every admitted record finished exactly once"
            );
            let snap = self.buf.snapshot();
            let s = &snap.sources[id.index()];
            assert_eq!(
                s.acked_through, s.admitted_through,
                "source {i}: acks caught up"
            );
            let ends = self.model.ends.get(&i).copied().unwrap_or_default();
            assert_eq!(
                [s.delivered, s.filtered, s.dead_lettered],
                ends,
                "source {i}: delivered, filtered and dead-lettered each counted apart"
            );
        }
        self.buf.audit().unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn random_operations_keep_every_invariant(ops in prop::collection::vec(op(), 1..120)) {
        let mut h = Harness::new();
        for op in ops {
            h.apply(op);
        }
        h.drain_all();
    }
}

#[test]
fn sequence_gap_and_zero_are_refused_whole() {
    let h = Harness::new();
    let s = h.sources[0];
    assert!(h.buf.admit(s, 0, vec![vec![1]]).is_err());
    let _ = h.buf.admit(s, 1, vec![vec![1]]).unwrap();
    let err = h.buf.admit(s, 3, vec![vec![1]]).unwrap_err();
    assert!(err.to_string().contains("expected seq 2, got 3"), "{err}");
    assert_eq!(h.buf.admitted_through(s).unwrap(), 1);
    assert!(h.buf.admit(s, u64::MAX, vec![vec![1], vec![2]]).is_err());
}

#[test]
fn a_batch_may_end_exactly_at_u64_max_and_nothing_follows() {
    let h = Harness::new();
    let s = h.sources[1];
    let out = h
        .buf
        .admit(s, u64::MAX - 1, vec![vec![1], vec![2]])
        .unwrap();
    assert_eq!((out.admitted, out.admitted_through), (2, u64::MAX));
    let dup = h.buf.admit(s, u64::MAX, vec![vec![3]]).unwrap();
    assert_eq!(
        (dup.admitted, dup.duplicates),
        (0, 1),
        "a resend of the last"
    );
    assert!(
        h.buf.admit(s, u64::MAX, vec![vec![3], vec![4]]).is_err(),
        "past u64::MAX"
    );
    let b = h.buf.try_batch(h.stages[0], 10);
    assert_eq!(h.buf.complete(b).sources[0].acked_through, u64::MAX);
    h.buf.audit().unwrap();
}

#[test]
fn too_large_record_is_refused_as_permanent() {
    let h = Harness::new();
    let out = h.buf.admit(h.sources[0], 1, vec![vec![0; 301]]).unwrap();
    let r = out.rejected.unwrap();
    assert!(!r.reason.is_transient());
    assert!(r.reason.to_string().contains("301 bytes"), "{}", r.reason);
}

#[test]
fn a_fresh_source_may_start_at_any_sequence() {
    // After an engine restart a source resends from its first unacked record.
    let h = Harness::new();
    let s = h.sources[0];
    let _ = h.buf.admit(s, 41, vec![vec![1], vec![2]]).unwrap();
    assert_eq!(h.buf.admitted_through(s).unwrap(), 42);
    let b = h.buf.try_batch(h.stages[0], 10);
    let done = h.buf.complete(b);
    assert_eq!(done.sources[0].acked_through, 42);
}

#[test]
fn out_of_order_completion_acks_only_the_contiguous_prefix() {
    let h = Harness::new();
    let s = h.sources[0];
    let _ = h.buf.admit(s, 1, vec![vec![1]; 5]).unwrap();
    let mut b = h.buf.try_batch(h.stages[0], 10);
    let tail = b.split_off(2); // seqs 3, 4, 5
    let done = h.buf.complete(tail);
    assert_eq!(done.sources[0].acked_through, 0);
    assert_eq!(done.sources[0].completed_now, 3);
    let done = h.buf.complete(b);
    assert_eq!(done.sources[0].acked_through, 5);
}
