//! A small model of the accounting under a randomised scheduler (shuttle).
//!
//! Two producers reserve and admit (partly beyond their credit, so some
//! records are rejected and resent) while a consumer takes, retries and
//! completes records, all on shuttle threads; every lock acquisition is a
//! scheduling point, so shuttle tries many interleavings of the operations.
//! After each schedule: the invariants hold, every admitted record finished
//! exactly once, and the acks caught up.
//!
//! Not part of `cargo test --workspace` (it needs the lock swapped for
//! shuttle's); run it with:
//!
//! ```sh
//! RUSTFLAGS="--cfg shuttle" CARGO_TARGET_DIR=target/shuttle cargo test -p sluice-buffer --test shuttle
//! ```
#![cfg(shuttle)]

use std::sync::Arc;
use std::time::Duration;

use shuttle::sync::Mutex;
use shuttle::thread;
use sluice_buffer::{BufferManager, Credit, Limit, Limits, RetryPolicy};

#[test]
fn concurrent_operations_keep_every_invariant() {
    shuttle::check_random(
        || {
            let buf = Arc::new(
                BufferManager::<Vec<u8>>::builder(Limits {
                    global: Limit::new(5, 50),
                    per_stage: Limit::new(4, 40),
                    per_source: Limit::new(3, 30),
                })
                .retry(RetryPolicy {
                    max_retries: 1,
                    initial_backoff: Duration::ZERO,
                    max_backoff: Duration::ZERO,
                })
                .pipeline("p", ["a"])
                .build()
                .unwrap(),
            );
            let p = buf.pipeline_by_name("p").unwrap().clone();
            let stage = p.stages[0];
            let finished = Arc::new(Mutex::new(Vec::<(u32, u64)>::new()));
            let mut threads = Vec::new();
            for i in 0..2u8 {
                let buf = buf.clone();
                let src = buf.register_source(&format!("s{i}"), p.id).unwrap();
                threads.push(thread::spawn(move || {
                    let _ = buf.reserve(src, Credit::new(2, 20)).unwrap();
                    let mut next = 1u64;
                    // Three records on two credits, then resend what was rejected.
                    for _ in 0..3 {
                        let remaining = 4 - next;
                        if remaining == 0 {
                            break;
                        }
                        let out = buf
                            .admit(src, next, vec![vec![i; 5]; remaining as usize])
                            .unwrap();
                        next += out.admitted as u64;
                        buf.audit().unwrap();
                    }
                    next - 1
                }));
            }
            let consumer = {
                let (buf, finished) = (buf.clone(), finished.clone());
                thread::spawn(move || {
                    for round in 0..4 {
                        let batch = buf.try_batch(stage, 2);
                        let (fail, ok): (Vec<_>, Vec<_>) =
                            batch.into_iter().partition(|_| round % 2 == 0);
                        let dead = buf.retry(fail, "flaky");
                        let mut f = finished.lock().unwrap();
                        f.extend(ok.iter().map(|r| (r.source().index() as u32, r.seq())));
                        f.extend(
                            dead.iter()
                                .map(|d| (d.record.source().index() as u32, d.record.seq())),
                        );
                        drop(f);
                        buf.complete(ok);
                        buf.complete_dead_letters(dead);
                        buf.audit().unwrap();
                    }
                })
            };
            let admitted: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            consumer.join().unwrap();

            // Finish the rest on one thread.
            loop {
                let batch = buf.try_batch(stage, 10);
                if batch.is_empty() {
                    break;
                }
                finished
                    .lock()
                    .unwrap()
                    .extend(batch.iter().map(|r| (r.source().index() as u32, r.seq())));
                buf.complete(batch);
            }
            buf.audit().unwrap();
            assert_eq!(buf.in_engine(), 0);
            let mut f = finished.lock().unwrap().clone();
            f.sort_unstable();
            let mut expected = Vec::new();
            for (i, &through) in admitted.iter().enumerate() {
                expected.extend((1..=through).map(|s| (i as u32, s)));
                let id = buf.source_id(&format!("s{i}")).unwrap();
                assert_eq!(buf.acked_through(id).unwrap(), through);
            }
            assert_eq!(f, expected, "every admitted record finished exactly once");
        },
        2_000,
    );
}
