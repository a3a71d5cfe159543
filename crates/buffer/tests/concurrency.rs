//! Invariants under real concurrency: many producer and consumer tasks on a
//! multi-thread runtime, and parked consumers woken by every kind of change.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use sluice_buffer::{BufferManager, Credit, Limit, Limits, RetryPolicy, SourceId};
use tokio::time::timeout;

/// A multi-thread runtime with `workers` worker threads (more than the
/// machine's cores, to get more interleavings).
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

const PRODUCERS: usize = 8;
const PER_PRODUCER: u64 = 250_000; // 2 million records in all
const BATCH: usize = 256;

/// Invariants 1, 2 and 4: 8 producers and 2 consumers per stage push two
/// million records through a two-stage pipeline with small limits, some
/// records failing and being retried. Every record comes out exactly once,
/// and the high-water marks prove no level was ever over its limit.
#[test]
fn eight_producers_four_consumers_two_million_records_exactly_once() {
    let rt = runtime(4);
    let limits = Limits {
        global: Limit::new(20_000, 20_000 * 16),
        per_stage: Limit::new(12_000, 12_000 * 16),
        per_source: Limit::new(4_000, 4_000 * 16),
    };
    let buf = Arc::new(
        BufferManager::<Vec<u8>>::builder(limits)
            .retry(RetryPolicy {
                max_retries: 1,
                initial_backoff: Duration::from_micros(50),
                max_backoff: Duration::from_millis(1),
            })
            .pipeline("p", ["transform", "sink"])
            .build()
            .unwrap(),
    );
    let info = buf.pipeline_by_name("p").unwrap().clone();
    // seen[source][seq-1]: how often the record reached the end (delivered or dead-lettered).
    let seen: Arc<Vec<Vec<AtomicU8>>> = Arc::new(
        (0..PRODUCERS)
            .map(|_| (0..PER_PRODUCER).map(|_| AtomicU8::new(0)).collect())
            .collect(),
    );

    rt.block_on(async {
        let mut producers = Vec::new();
        for p in 0..PRODUCERS {
            let buf = buf.clone();
            let src = buf.register_source(&format!("src-{p}"), info.id).unwrap();
            producers.push(tokio::spawn(async move {
                let mut next = 1u64;
                let mut rejected = 0u64;
                while next <= PER_PRODUCER {
                    let n = (PER_PRODUCER - next + 1).min(BATCH as u64);
                    // Half of the producers use credits, half push blindly.
                    if p % 2 == 0 {
                        let c = buf.reserve(src, Credit::new(n, n * 16)).unwrap();
                        if c.is_zero() {
                            let freed = buf.capacity_freed();
                            tokio::select! { _ = freed => {}, _ = tokio::time::sleep(Duration::from_millis(1)) => {} }
                            continue;
                        }
                        let batch: Vec<Vec<u8>> = (0..c.records).map(|_| vec![p as u8; 16]).collect();
                        let out = buf.admit(src, next, batch).unwrap();
                        assert!(out.rejected.is_none(), "a producer within its credits was rejected");
                        next += out.admitted as u64;
                    } else {
                        let batch: Vec<Vec<u8>> = (0..n).map(|_| vec![p as u8; 16]).collect();
                        let out = buf.admit(src, next, batch).unwrap();
                        next += out.admitted as u64;
                        if let Some(r) = out.rejected {
                            assert_eq!(r.first_seq, next);
                            rejected += r.records.len() as u64;
                            let freed = buf.capacity_freed();
                            tokio::select! { _ = freed => {}, _ = tokio::time::sleep(Duration::from_millis(1)) => {} }
                        }
                    }
                }
                rejected
            }));
        }
        let mut consumers = Vec::new();
        for c in 0..2 {
            // Stage 0: fail every 97th record once (retry), forward the rest.
            let (buf2, info2) = (buf.clone(), info.clone());
            consumers.push(tokio::spawn(async move {
                let mut round = 0u64;
                while let Some(batch) = buf2.next_batch(info2.stages[0], BATCH).await {
                    round += 1;
                    let (fail, ok): (Vec<_>, Vec<_>) =
                        batch.into_iter().partition(|r| r.retry_count() == 0 && (r.seq() + c + round).is_multiple_of(97));
                    let dead = buf2.retry(fail, "injected");
                    assert!(dead.is_empty());
                    if buf2.forward(ok, info2.stages[1]).await.is_err() {
                        break;
                    }
                }
            }));
            // Stage 1: the sink; every 1009th record fails twice → dead letter.
            let (buf2, info2, seen2) = (buf.clone(), info.clone(), seen.clone());
            consumers.push(tokio::spawn(async move {
                while let Some(batch) = buf2.next_batch(info2.stages[1], BATCH).await {
                    let (fail, ok): (Vec<_>, Vec<_>) = batch.into_iter().partition(|r| r.seq().is_multiple_of(1009));
                    let dead = buf2.retry(fail, "sink down");
                    for r in &ok {
                        seen2[r.source().index()][(r.seq() - 1) as usize].fetch_add(1, Ordering::Relaxed);
                    }
                    for d in &dead {
                        seen2[d.record.source().index()][(d.record.seq() - 1) as usize].fetch_add(1, Ordering::Relaxed);
                    }
                    buf2.complete(ok);
                    buf2.complete_dead_letters(dead);
                }
            }));
        }
        // Audit while the load runs.
        let auditor = {
            let buf = buf.clone();
            tokio::spawn(async move {
                while !buf.is_shut_down() {
                    if let Err(e) = buf.audit() {
                        panic!("invariant broken under load: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        for p in producers {
            timeout(Duration::from_secs(120), p).await.expect("producers stalled").unwrap();
        }
        timeout(Duration::from_secs(60), buf.drain()).await.expect("drain stalled");
        buf.shutdown();
        for c in consumers {
            timeout(Duration::from_secs(10), c).await.expect("consumer not woken by shutdown").unwrap();
        }
        auditor.await.unwrap();
    });

    buf.audit().unwrap();
    let snap = buf.snapshot();
    assert!(
        snap.global.peak_records <= limits.global.records
            && snap.global.peak_bytes <= limits.global.bytes
    );
    for s in &snap.stages {
        assert!(s.level.peak_records <= limits.per_stage.records, "{s:?}");
        assert!(s.level.peak_bytes <= limits.per_stage.bytes, "{s:?}");
    }
    // The limits were really reached, so the bound was exercised.
    assert!(
        snap.sources
            .iter()
            .any(|s| s.level.peak_records == limits.per_source.records)
    );
    let mut dead_total = 0;
    for s in &snap.sources {
        assert!(s.level.peak_records <= limits.per_source.records);
        assert_eq!(s.admitted, PER_PRODUCER);
        assert_eq!(s.acked_through, PER_PRODUCER, "{s:?}");
        assert_eq!(s.delivered + s.dead_lettered, PER_PRODUCER);
        dead_total += s.dead_lettered;
    }
    assert_eq!(dead_total, PRODUCERS as u64 * (PER_PRODUCER / 1009));
    for (p, per) in seen.iter().enumerate() {
        for (i, n) in per.iter().enumerate() {
            assert_eq!(
                n.load(Ordering::Relaxed),
                1,
                "source {p} seq {} came out {} times",
                i + 1,
                n.load(Ordering::Relaxed)
            );
        }
    }
}

/// A small buffer (pipeline `p` of stages `a`, `b`; retries without end
/// or backoff) with one source `s`.
fn small() -> (
    Arc<BufferManager<Vec<u8>>>,
    sluice_buffer::PipelineInfo,
    SourceId,
) {
    let buf = Arc::new(
        BufferManager::<Vec<u8>>::builder(Limits {
            global: Limit::new(4, 1 << 20),
            per_stage: Limit::new(2, 1 << 20),
            per_source: Limit::new(4, 1 << 20),
        })
        .retry(RetryPolicy {
            max_retries: u32::MAX,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
        })
        .pipeline("p", ["a", "b"])
        .build()
        .unwrap(),
    );
    let info = buf.pipeline_by_name("p").unwrap().clone();
    let src = buf.register_source("s", info.id).unwrap();
    (buf, info, src)
}

/// Lets spawned tasks run until they park (a few scheduler rounds).
async fn settle() {
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
}

const ROUNDS: u64 = 500;

/// A consumer parked in `next_batch` is woken by a push (admit), a forward
/// into its stage, and a retry — each repeated many times; a lost wake-up
/// shows up as a timeout.
#[test]
fn parked_consumer_is_woken_by_push_forward_and_retry() {
    runtime(2).block_on(async {
        let (buf, info, src) = small();
        for i in 0..ROUNDS {
            // push
            let (b, st) = (buf.clone(), info.stages[0]);
            let waiter = tokio::spawn(async move { b.next_batch(st, 8).await });
            settle().await;
            let _ = buf.admit(src, i + 1, vec![vec![1]]).unwrap();
            let batch = timeout(Duration::from_secs(5), waiter)
                .await
                .expect("lost wake-up on push")
                .unwrap()
                .unwrap();
            assert_eq!(batch.len(), 1);

            // forward
            let (b, st) = (buf.clone(), info.stages[1]);
            let waiter = tokio::spawn(async move { b.next_batch(st, 8).await });
            settle().await;
            buf.forward(batch, info.stages[1]).await.unwrap();
            let batch = timeout(Duration::from_secs(5), waiter)
                .await
                .expect("lost wake-up on forward")
                .unwrap()
                .unwrap();

            // retry
            let (b, st) = (buf.clone(), info.stages[1]);
            let waiter = tokio::spawn(async move { b.next_batch(st, 8).await });
            settle().await;
            assert!(buf.retry(batch, "again").is_empty());
            let batch = timeout(Duration::from_secs(5), waiter)
                .await
                .expect("lost wake-up on retry")
                .unwrap()
                .unwrap();
            buf.complete(batch);
        }
        buf.audit().unwrap();
        assert_eq!(buf.acked_through(src).unwrap(), ROUNDS);
    });
}

/// Shutdown wakes every kind of waiter: consumers, a forward waiting for
/// room, and `drain`; the forward's records go back to their queue.
#[test]
fn shutdown_wakes_every_waiter() {
    runtime(2).block_on(async {
        for _ in 0..200 {
            let (buf, info, src) = small();
            let consumers: Vec<_> = (0..2)
                .map(|_| {
                    let (b, st) = (buf.clone(), info.stages[1]);
                    tokio::spawn(async move { b.next_batch(st, 8).await })
                })
                .collect();
            // Fill stage b (limit 2), then try to forward 2 more into it.
            let _ = buf.admit(src, 1, vec![vec![1], vec![2]]).unwrap();
            let first = buf.try_batch(info.stages[0], 8);
            buf.forward(first, info.stages[1]).await.unwrap();
            let _ = buf.admit(src, 3, vec![vec![3], vec![4]]).unwrap();
            let second = buf.try_batch(info.stages[0], 8);
            assert_eq!(second.len(), 2);
            let fwd = {
                let (b, st) = (buf.clone(), info.stages[1]);
                tokio::spawn(async move { b.forward(second, st).await })
            };
            let drain = {
                let b = buf.clone();
                tokio::spawn(async move { b.drain().await })
            };
            settle().await;
            buf.shutdown();
            for c in consumers {
                // Either it got the forwarded records before shutdown or it was woken by it.
                timeout(Duration::from_secs(5), c)
                    .await
                    .expect("consumer not woken by shutdown")
                    .unwrap();
            }
            let r = timeout(Duration::from_secs(5), fwd)
                .await
                .expect("forward not woken by shutdown")
                .unwrap();
            assert!(r.is_err());
            // drain still waits (records are unacked), but it must not hang the runtime.
            drain.abort();
            buf.audit().unwrap();
            let snap = buf.snapshot();
            assert_eq!(snap.sources[0].admitted, 4);
            assert_eq!(
                snap.stages[0].queued_records, 2,
                "unmoved records went back to their queue"
            );
        }
    });
}

/// A forward waiting for room is woken when the next stage frees space.
#[test]
fn forward_waits_for_room_and_is_woken_by_completion() {
    runtime(2).block_on(async {
        let (buf, info, src) = small();
        let mut seq = 1;
        for _ in 0..ROUNDS {
            let _ = buf.admit(src, seq, vec![vec![1], vec![2]]).unwrap();
            let a = buf.try_batch(info.stages[0], 8);
            buf.forward(a, info.stages[1]).await.unwrap();
            let _ = buf.admit(src, seq + 2, vec![vec![3]]).unwrap();
            let b = buf.try_batch(info.stages[0], 8);
            let fwd = {
                let (bm, st) = (buf.clone(), info.stages[1]);
                tokio::spawn(async move { bm.forward(b, st).await })
            };
            settle().await;
            let done = buf.try_batch(info.stages[1], 8);
            assert_eq!(done.len(), 2);
            buf.complete(done);
            timeout(Duration::from_secs(5), fwd)
                .await
                .expect("lost wake-up on space")
                .unwrap()
                .unwrap();
            let last = buf.try_batch(info.stages[1], 8);
            assert_eq!(last.len(), 1);
            buf.complete(last);
            seq += 3;
        }
        buf.audit().unwrap();
        assert_eq!(buf.acked_through(src).unwrap(), seq - 1);
    });
}

/// `drain` returns once every admitted record is completed, and not before.
#[test]
fn drain_waits_for_the_last_completion() {
    runtime(2).block_on(async {
        let (buf, info, src) = small();
        for i in 0..ROUNDS {
            let _ = buf.admit(src, i + 1, vec![vec![1]]).unwrap();
            let _ = buf.reserve(src, Credit::new(1, 1)).unwrap(); // reservations do not hold drain up
            let drain = {
                let b = buf.clone();
                tokio::spawn(async move { b.drain().await })
            };
            settle().await;
            assert!(!drain.is_finished());
            let batch = buf.try_batch(info.stages[0], 8);
            buf.complete(batch);
            timeout(Duration::from_secs(5), drain)
                .await
                .expect("drain not woken")
                .unwrap();
            let r = buf.reserved(src).unwrap();
            buf.release(src, r).unwrap();
        }
    });
}
