//! Small models of the accounting under a randomised scheduler (shuttle).
//!
//! Every lock of the crate is taken through its `sync` shim, which is
//! shuttle's mutex in this build, so every lock acquisition (the manager's
//! and the flow controller's) is a scheduling point and shuttle tries many
//! interleavings of the operations.
//!
//! - `concurrent_operations_keep_every_invariant`: two producers reserve and
//!   admit (partly beyond their credit, so some records are rejected and
//!   resent) while a consumer takes, retries and completes records.
//! - `flow_control_keeps_every_invariant` (and its variant with a
//!   controller shutdown): two sources are opened through a
//!   `BackpressureController`; each takes grants from its `SourceHandle`,
//!   admits through it (within its credit or beyond it) and closes it; a
//!   consumer takes, retries and completes records; and a third thread runs
//!   the controller's evaluation, as its background task would, so grants
//!   (controller lock, then manager lock), the fair share, state
//!   transitions and signal publication interleave with admission and
//!   completion. The background task itself (`run`) and `wait_credit` are
//!   async on tokio's timer and `Notify`; the model drives the same
//!   `evaluate()` on a shuttle thread and polls `grant()` instead.
//!
//! - `handles_never_lose_a_wake_up`: two producers, each held back by its
//!   own per-source limit and by the global one, send through
//!   `Producer::send` (waiting on the limit that refused them), while a
//!   consumer receives and completes through `Consumer::recv` until the
//!   channel ends. A lost wake-up leaves a thread blocked forever, which
//!   shuttle reports as a deadlock; a stale or misplaced registration
//!   fails `audit()` (invariant 4).
//!
//! After each schedule: the manager's and the controller's `audit()`
//! invariants hold, every admitted record finished exactly once, the acks
//! caught up, and every credit was returned (no reservation left).
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

use shuttle::future::block_on;
use shuttle::sync::Mutex;
use shuttle::thread;
use sluice_buffer::{
    BackpressureController, BufferManager, ControllerConfig, ControllerError, Credit, Limit,
    Limits, RetryPolicy, StageId,
};

/// The records each model saw finish (delivered or dead-lettered), as
/// (source index, sequence number).
type Finished = Arc<Mutex<Vec<(u32, u64)>>>;

/// A buffer of one pipeline `p` with one stage `a`; every level holds
/// `records` records (of 10 bytes each), one fewer per level down (global,
/// stage, source); a failed record is retried once, with no backoff.
fn model_buffer(records: u64) -> Arc<BufferManager<Vec<u8>>> {
    Arc::new(
        BufferManager::<Vec<u8>>::builder(Limits {
            global: Limit::new(records, records * 10),
            per_stage: Limit::new(records - 1, (records - 1) * 10),
            per_source: Limit::new(records - 2, (records - 2) * 10),
        })
        .retry(RetryPolicy {
            max_retries: 1,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
        })
        .pipeline("p", ["a"])
        .build()
        .unwrap(),
    )
}

/// A consumer thread: four rounds of taking up to two records of `stage`,
/// failing them in the rounds `fails` picks (retried, or dead-lettered) and
/// completing the others; each finished record is noted in `finished`.
fn spawn_consumer(
    buf: &Arc<BufferManager<Vec<u8>>>,
    stage: StageId,
    finished: &Finished,
    fails: fn(u32) -> bool,
) -> thread::JoinHandle<()> {
    let (buf, finished) = (buf.clone(), finished.clone());
    thread::spawn(move || {
        for round in 0..4 {
            let batch = buf.try_batch(stage, 2);
            let (fail, ok): (Vec<_>, Vec<_>) = batch.into_iter().partition(|_| fails(round));
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
}

/// Finishes on this thread what is left in `stage`; then the manager's
/// invariants hold, nothing is in the engine, and every admitted record
/// (source `i` admitted 1..=`admitted[i]`) finished exactly once.
fn finish_the_rest(
    buf: &BufferManager<Vec<u8>>,
    stage: StageId,
    finished: &Finished,
    admitted: &[u64],
) {
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
    let expected: Vec<_> = admitted
        .iter()
        .enumerate()
        .flat_map(|(i, &through)| (1..=through).map(move |s| (i as u32, s)))
        .collect();
    assert_eq!(f, expected, "every admitted record finished exactly once");
}

#[test]
fn concurrent_operations_keep_every_invariant() {
    shuttle::check_random(
        || {
            let buf = model_buffer(5);
            let p = buf.pipeline_by_name("p").unwrap().clone();
            let stage = p.stages[0];
            let finished = Finished::default();
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
            let consumer = spawn_consumer(&buf, stage, &finished, |round| round % 2 == 0);
            let admitted: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            consumer.join().unwrap();

            finish_the_rest(&buf, stage, &finished, &admitted);
            for (i, &through) in admitted.iter().enumerate() {
                let id = buf.source_id(&format!("s{i}")).unwrap();
                assert_eq!(buf.acked_through(id).unwrap(), through);
            }
        },
        2_000,
    );
}

/// Sources through the flow controller, a consumer, and the controller's
/// evaluation, interleaved; `shutdown` also shuts the controller down from
/// the evaluating thread part-way.
fn flow_model(shutdown: bool) {
    let buf = model_buffer(6);
    let p = buf.pipeline_by_name("p").unwrap().clone();
    let stage = p.stages[0];
    let ids: Vec<_> = (0..2)
        .map(|i| buf.register_source(&format!("s{i}"), p.id).unwrap())
        .collect();
    // A window of 2 records (the cap: low 0.5 × 4 per source) of 5 bytes.
    let flow = BackpressureController::new(
        buf.clone(),
        ControllerConfig::default().with_window_records(2, 5),
        None,
    )
    .unwrap();
    let finished = Finished::default();

    const RECORDS: u64 = 4;
    let mut sources = Vec::new();
    for (i, &src) in ids.iter().enumerate() {
        let (buf, flow) = (buf.clone(), flow.clone());
        sources.push(thread::spawn(move || {
            let handle = match flow.open_source(src) {
                Ok(handle) => handle,
                Err(e) => {
                    // Only a controller already shut down refuses a session.
                    assert!(shutdown && e == ControllerError::Closed, "{e}");
                    return 0;
                }
            };
            let mut next = 1u64;
            for _ in 0..4 {
                if next > RECORDS {
                    break;
                }
                let credit = handle.grant();
                assert!(credit.records <= 2, "never more than the window");
                // Within the credit, or one record beyond it without any
                // (then a full level rejects it, and it is resent).
                let n = (RECORDS + 1 - next).min(credit.records.max(1));
                let out = handle
                    .admit(next, vec![vec![i as u8; 5]; n as usize])
                    .unwrap();
                next += out.admitted as u64;
                buf.audit().unwrap();
            }
            handle.close();
            next - 1
        }));
    }
    let consumer = spawn_consumer(&buf, stage, &finished, |round| round == 1);
    let evaluator = {
        let (buf, flow) = (buf.clone(), flow.clone());
        thread::spawn(move || {
            for round in 0..3 {
                flow.evaluate();
                flow.audit().unwrap();
                buf.audit().unwrap();
                if shutdown && round == 1 {
                    flow.shutdown();
                }
            }
        })
    };
    let admitted: Vec<u64> = sources.into_iter().map(|t| t.join().unwrap()).collect();
    consumer.join().unwrap();
    evaluator.join().unwrap();

    finish_the_rest(&buf, stage, &finished, &admitted);
    flow.audit().unwrap();
    for (i, &through) in admitted.iter().enumerate() {
        assert_eq!(buf.acked_through(ids[i]).unwrap(), through);
        assert_eq!(
            buf.reserved(ids[i]).unwrap(),
            Credit::ZERO,
            "source {i}: every credit returned when its handle closed"
        );
    }
    let global = buf.snapshot().global;
    assert_eq!((global.reserved_records, global.reserved_bytes), (0, 0));
    if shutdown {
        assert!(flow.is_shut_down());
    } else {
        // Nothing left in the engine: every source can run at full speed again.
        flow.evaluate();
        for &id in &ids {
            assert_eq!(flow.state(id), Some(sluice_buffer::SourceState::Normal));
        }
    }
}

#[test]
fn flow_control_keeps_every_invariant() {
    shuttle::check_random(|| flow_model(false), 2_000);
}

#[test]
fn flow_control_with_shutdown_keeps_every_invariant() {
    shuttle::check_random(|| flow_model(true), 1_000);
}

#[test]
fn handles_never_lose_a_wake_up() {
    shuttle::check_random(
        || {
            // Each source holds at most 2 records, all of them together 3:
            // both producers wait, on their own limit or on the global one.
            let limits = Limits::records(3).per_source(Limit::records(2));
            let (producers, consumer) = sluice_buffer::channel::<Vec<u8>>(limits).unwrap();
            let buf = producers.manager().clone();
            let mut threads = Vec::new();
            for i in 0..2u8 {
                let mut producer = producers.producer(&format!("s{i}")).unwrap();
                let buf = buf.clone();
                threads.push(thread::spawn(move || {
                    for _ in 0..2 {
                        // Three records on a limit of two: the tail waits.
                        block_on(producer.send(vec![vec![i; 1]; 3])).unwrap();
                        buf.audit().unwrap();
                    }
                    producer.admitted_through()
                }));
            }
            drop(producers);
            let receiver = {
                let buf = buf.clone();
                thread::spawn(move || {
                    let mut seen = Vec::new();
                    while let Some(batch) = block_on(consumer.recv_max(2)) {
                        seen.extend(batch.iter().map(|r| (r.source().index() as u32, r.seq())));
                        consumer.complete(batch);
                        buf.audit().unwrap();
                    }
                    seen
                })
            };
            let admitted: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            let mut seen = receiver.join().unwrap();
            assert_eq!(admitted, [6, 6]);
            seen.sort_unstable();
            let expected: Vec<_> = (0..2u32)
                .flat_map(|i| (1..=6).map(move |s| (i, s)))
                .collect();
            assert_eq!(seen, expected, "every record received exactly once");
            buf.audit().unwrap();
            assert_eq!(buf.in_engine(), 0);
        },
        2_000,
    );
}
