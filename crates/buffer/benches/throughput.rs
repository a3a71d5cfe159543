//! Throughput of the BufferManager, side by side with the plain bounded
//! channel answer to the same problem (`tokio::sync::mpsc`), on the same
//! pre-built records. Run: `cargo bench -p sluice-buffer --bench throughput`.
//!
//! * `single_thread`: admit + next_batch + complete of 256-record batches.
//! * `mpsc_vs_buffer/{1p1c,4p2c}`: producers move `RECORDS` records to
//!   consumers. The channel gets one `send` per record and consumers use
//!   `recv_many(.., 256)` (two consumers share the receiver behind a lock, as
//!   a user would have to); the buffer gets 256-record batches and enforces
//!   global, per-stage and per-source limits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BatchSize as CBatch, Criterion, Throughput, criterion_group, criterion_main};
use sluice_buffer::{BufferManager, ByteSize, Limit, Limits};

/// The record both contenders move: a key and a 100-byte payload that is a
/// slice of a shared receive buffer (as prost decodes `bytes` fields).
struct Record {
    #[allow(dead_code)]
    key: u64,
    payload: Bytes,
}

impl ByteSize for Record {
    fn byte_size(&self) -> usize {
        self.payload.len()
    }
}

const BATCH: usize = 256;
const CAPACITY: usize = 10_000;
const RECORDS: usize = 256_000;

fn records(n: usize, frame: &Bytes) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let off = (i % 64) * 100;
            Record {
                key: i as u64,
                payload: frame.slice(off..off + 100),
            }
        })
        .collect()
}

fn frame() -> Bytes {
    Bytes::from(vec![7u8; 64 * 100])
}

fn limits(producers: usize) -> Limits {
    Limits {
        global: Limit::new(CAPACITY as u64, CAPACITY as u64 * 100),
        per_stage: Limit::new(CAPACITY as u64, CAPACITY as u64 * 100),
        per_source: Limit::new(
            (CAPACITY / producers.max(2)) as u64,
            (CAPACITY / producers.max(2)) as u64 * 100,
        ),
    }
}

fn single_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("single_thread");
    g.throughput(Throughput::Elements(BATCH as u64));
    let f = frame();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let buf = BufferManager::<Record>::builder(limits(1))
        .pipeline("p", ["sink"])
        .build()
        .unwrap();
    let info = buf.pipeline_by_name("p").unwrap().clone();
    let src = buf.register_source("s", info.id).unwrap();
    let mut seq = 1u64;
    g.bench_function("admit_next_batch_complete_256", |b| {
        b.iter_batched(
            || records(BATCH, &f),
            |batch| {
                let out = buf.admit(src, seq, batch).unwrap();
                debug_assert!(out.rejected.is_none());
                seq += BATCH as u64;
                let got = rt.block_on(buf.next_batch(info.stages[0], BATCH)).unwrap();
                buf.complete(got)
            },
            CBatch::SmallInput,
        )
    });
    g.finish();
}

async fn run_channel(producers: usize, consumers: usize, input: Vec<Vec<Record>>) -> Duration {
    let (tx, rx) = tokio::sync::mpsc::channel::<Record>(CAPACITY);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let start = Instant::now();
    let mut handles = Vec::new();
    for part in input {
        let tx = tx.clone();
        handles.push(tokio::spawn(async move {
            for r in part {
                if tx.send(r).await.is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    let mut cons = Vec::new();
    for _ in 0..consumers {
        let rx = rx.clone();
        cons.push(tokio::spawn(async move {
            let mut buf = Vec::with_capacity(BATCH);
            let mut n = 0usize;
            loop {
                let got = rx.lock().await.recv_many(&mut buf, BATCH).await;
                if got == 0 {
                    return n;
                }
                n += got;
                buf.clear();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let mut total = 0;
    for c in cons {
        total += c.await.unwrap();
    }
    assert_eq!(total, RECORDS);
    let _ = producers;
    start.elapsed()
}

async fn run_buffer(producers: usize, consumers: usize, input: Vec<Vec<Vec<Record>>>) -> Duration {
    let buf = Arc::new(
        BufferManager::<Record>::builder(limits(producers))
            .pipeline("p", ["sink"])
            .build()
            .unwrap(),
    );
    let info = buf.pipeline_by_name("p").unwrap().clone();
    let start = Instant::now();
    let mut handles = Vec::new();
    for (p, batches) in input.into_iter().enumerate() {
        let buf = buf.clone();
        let src = buf.register_source(&format!("s{p}"), info.id).unwrap();
        handles.push(tokio::spawn(async move {
            let mut seq = 1u64;
            for mut batch in batches {
                loop {
                    let freed = buf.capacity_freed();
                    let out = buf.admit(src, seq, batch).unwrap();
                    seq += out.admitted as u64;
                    match out.rejected {
                        None => break,
                        Some(r) => {
                            batch = r.payloads;
                            freed.await;
                        }
                    }
                }
            }
        }));
    }
    let mut cons = Vec::new();
    for _ in 0..consumers {
        let buf = buf.clone();
        let stage = info.stages[0];
        cons.push(tokio::spawn(async move {
            let mut n = 0usize;
            while let Some(b) = buf.next_batch(stage, BATCH).await {
                n += b.len();
                buf.complete(b);
            }
            n
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    buf.drain().await;
    buf.shutdown();
    let mut total = 0;
    for c in cons {
        total += c.await.unwrap();
    }
    assert_eq!(total, RECORDS);
    start.elapsed()
}

fn mpsc_vs_buffer(c: &mut Criterion) {
    let mut g = c.benchmark_group("mpsc_vs_buffer");
    g.throughput(Throughput::Elements(RECORDS as u64));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(8));
    let f = frame();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for (p, cons) in [(1usize, 1usize), (4, 2)] {
        let name = format!("{p}p{cons}c");
        g.bench_function(format!("mpsc_channel/{name}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let input: Vec<Vec<Record>> =
                        (0..p).map(|_| records(RECORDS / p, &f)).collect();
                    total += rt.block_on(run_channel(p, cons, input));
                }
                total
            })
        });
        g.bench_function(format!("sluice_buffer/{name}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let input: Vec<Vec<Vec<Record>>> = (0..p)
                        .map(|_| {
                            let mut it = records(RECORDS / p, &f).into_iter().peekable();
                            let mut batches = Vec::new();
                            while it.peek().is_some() {
                                batches.push(it.by_ref().take(BATCH).collect::<Vec<_>>());
                            }
                            batches
                        })
                        .collect();
                    total += rt.block_on(run_buffer(p, cons, input));
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, single_thread, mpsc_vs_buffer);
criterion_main!(benches);
