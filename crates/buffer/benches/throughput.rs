//! Throughput of sluice-buffer through its handles, side by side with the
//! tokio channels a user would otherwise reach for, in one process.
//! Run: `cargo bench -p sluice-buffer --bench throughput`.
//!
//! * `single_thread`: one task cycles 256-record batches: through the
//!   handles (`try_send` of a `Vec` → `try_recv` → `complete`) and through
//!   the lower-level calls (`admit` of a `Pending` built in the record
//!   layout → `next_batch` → `complete`).
//! * `contenders/{1p1c,2p1c,4p2c}/{per_record,pre_built}/…`: producers move
//!   `RECORDS` records to consumers, with the same capacity in records for
//!   every contender (`CAPACITY`):
//!   - `sluice`: `Producer::send` of `Vec`s of 256 records (as a user of
//!     the handles sends them), `Consumer::recv` + `complete`; global,
//!     per-stage and per-source limits all enforced, in records and bytes;
//!   - `mpsc_vecs`: a tokio `mpsc` of `Vec`s of 256 records, bounded to
//!     `CAPACITY / 256` batches (it bounds nothing per source or in bytes);
//!   - `mpsc_records`: a tokio `mpsc` of records, `send` per record,
//!     `recv_many(.., 256)`.
//!
//!   `per_record`: each producer builds every record in the timed section
//!   (into its batch type); `pre_built`: the batches exist before it, each
//!   contender's in its own batch type (the same `Vec`s for `sluice` and
//!   `mpsc_vecs`). Two consumers share an mpsc
//!   receiver behind a `tokio::sync::Mutex` (as a user would have to); the
//!   buffer's consumer is cloned.
//! * After criterion, `alternating`: the same scenarios, contenders run in
//!   alternating rounds (`ROUNDS`, default 15), printed as the median ratio of sluice's
//!   throughput to each channel's: the figure BENCHMARKS.md reports, as
//!   alternation cancels this machine's drift.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BatchSize as CBatch, Criterion, Throughput};
use sluice_buffer::{BufferManager, ByteSize, Limit, Limits, Pending};

/// The record every contender moves: a key and a 100-byte payload that is a
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
/// Alternating rounds per scenario; `ROUNDS=0` in the environment skips them.
fn rounds() -> usize {
    std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(15)
}

fn record(i: usize, frame: &Bytes) -> Record {
    let off = (i % 64) * 100;
    Record {
        key: i as u64,
        payload: frame.slice(off..off + 100),
    }
}

fn frame() -> Bytes {
    Bytes::from(vec![7u8; 64 * 100])
}

/// Every level bounded in records and bytes: the global and stage levels
/// at the capacity, each source at its share (half for one producer, so
/// that the per-source limit binds too).
fn limits(producers: usize) -> Limits {
    let per_source = (CAPACITY / producers.max(2)) as u64;
    Limits {
        global: Limit::new(CAPACITY as u64, CAPACITY as u64 * 100),
        per_stage: Limit::new(CAPACITY as u64, CAPACITY as u64 * 100),
        per_source: Limit::new(per_source, per_source * 100),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Build {
    PerRecord,
    PreBuilt,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Contender {
    Sluice,
    MpscVecs,
    MpscRecords,
}

impl Contender {
    const ALL: [Contender; 3] = [
        Contender::Sluice,
        Contender::MpscVecs,
        Contender::MpscRecords,
    ];

    fn name(self) -> &'static str {
        match self {
            Contender::Sluice => "sluice",
            Contender::MpscVecs => "mpsc_vecs",
            Contender::MpscRecords => "mpsc_records",
        }
    }
}

/// The batches of one producer, built in each contender's batch type.
enum Input {
    /// Built in the timed section: the producer's share of record indices.
    PerRecord(std::ops::Range<usize>),
    Vecs(Vec<Vec<Record>>),
    Records(Vec<Record>),
}

fn inputs(c: Contender, build: Build, producers: usize, f: &Bytes) -> Vec<Input> {
    let share = RECORDS / producers;
    (0..producers)
        .map(|p| {
            let range = p * share..(p + 1) * share;
            if build == Build::PerRecord {
                return Input::PerRecord(range);
            }
            let chunks = || {
                range
                    .clone()
                    .step_by(BATCH)
                    .map(|s| s..(s + BATCH).min(range.end))
            };
            match c {
                Contender::Sluice | Contender::MpscVecs => Input::Vecs(
                    chunks()
                        .map(|r| r.map(|i| record(i, f)).collect())
                        .collect(),
                ),
                Contender::MpscRecords => Input::Records(range.map(|i| record(i, f)).collect()),
            }
        })
        .collect()
}

/// One run: `inputs.len()` producers, `consumers` consumers; the time from
/// the first send to the last record received.
async fn run(c: Contender, consumers: usize, inputs: Vec<Input>, f: &Bytes) -> Duration {
    match c {
        Contender::Sluice => run_sluice(consumers, inputs, f).await,
        Contender::MpscVecs => run_mpsc_vecs(consumers, inputs, f).await,
        Contender::MpscRecords => run_mpsc_records(consumers, inputs, f).await,
    }
}

async fn run_sluice(consumers: usize, inputs: Vec<Input>, f: &Bytes) -> Duration {
    let (producers, consumer) = sluice_buffer::channel::<Record>(limits(inputs.len())).unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (p, input) in inputs.into_iter().enumerate() {
        let mut producer = producers.producer(&format!("s{p}")).unwrap();
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            match input {
                Input::PerRecord(range) => {
                    let mut batch = Vec::with_capacity(BATCH);
                    for i in range {
                        batch.push(record(i, &f));
                        if batch.len() == BATCH {
                            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                            producer.send(full).await.unwrap();
                        }
                    }
                    if !batch.is_empty() {
                        producer.send(batch).await.unwrap();
                    }
                }
                Input::Vecs(batches) => {
                    for batch in batches {
                        producer.send(batch).await.unwrap();
                    }
                }
                _ => unreachable!("sluice input"),
            }
        }));
    }
    drop(producers);
    let mut cons = Vec::new();
    for _ in 0..consumers {
        let consumer = consumer.clone();
        cons.push(tokio::spawn(async move {
            let mut n = 0;
            while let Some(batch) = consumer.recv().await {
                n += batch.len();
                consumer.complete(batch);
            }
            n
        }));
    }
    drop(consumer);
    finish(tasks, cons, start).await
}

async fn run_mpsc_vecs(consumers: usize, inputs: Vec<Input>, f: &Bytes) -> Duration {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Record>>(CAPACITY / BATCH);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for input in inputs {
        let tx = tx.clone();
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            match input {
                Input::PerRecord(range) => {
                    let mut batch = Vec::with_capacity(BATCH);
                    for i in range {
                        batch.push(record(i, &f));
                        if batch.len() == BATCH {
                            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                            tx.send(full).await.unwrap();
                        }
                    }
                    if !batch.is_empty() {
                        tx.send(batch).await.unwrap();
                    }
                }
                Input::Vecs(batches) => {
                    for batch in batches {
                        tx.send(batch).await.unwrap();
                    }
                }
                _ => unreachable!("mpsc_vecs input"),
            }
        }));
    }
    drop(tx);
    let mut cons = Vec::new();
    for _ in 0..consumers {
        let rx = rx.clone();
        cons.push(tokio::spawn(async move {
            let mut n = 0;
            loop {
                let Some(batch) = rx.lock().await.recv().await else {
                    return n;
                };
                n += batch.len();
            }
        }));
    }
    finish(tasks, cons, start).await
}

async fn run_mpsc_records(consumers: usize, inputs: Vec<Input>, f: &Bytes) -> Duration {
    let (tx, rx) = tokio::sync::mpsc::channel::<Record>(CAPACITY);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for input in inputs {
        let tx = tx.clone();
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            match input {
                Input::PerRecord(range) => {
                    for i in range {
                        tx.send(record(i, &f)).await.unwrap();
                    }
                }
                Input::Records(records) => {
                    for r in records {
                        tx.send(r).await.unwrap();
                    }
                }
                _ => unreachable!("mpsc_records input"),
            }
        }));
    }
    drop(tx);
    let mut cons = Vec::new();
    for _ in 0..consumers {
        let rx = rx.clone();
        cons.push(tokio::spawn(async move {
            let mut buf = Vec::with_capacity(BATCH);
            let mut n = 0;
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
    finish(tasks, cons, start).await
}

async fn finish(
    producers: Vec<tokio::task::JoinHandle<()>>,
    consumers: Vec<tokio::task::JoinHandle<usize>>,
    start: Instant,
) -> Duration {
    for p in producers {
        p.await.unwrap();
    }
    let mut total = 0;
    for c in consumers {
        total += c.await.unwrap();
    }
    let elapsed = start.elapsed();
    assert_eq!(total, RECORDS);
    elapsed
}

const SCENARIOS: [(usize, usize); 3] = [(1, 1), (2, 1), (4, 2)];
const BUILDS: [Build; 2] = [Build::PerRecord, Build::PreBuilt];

fn build_name(b: Build) -> &'static str {
    match b {
        Build::PerRecord => "per_record",
        Build::PreBuilt => "pre_built",
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn single_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("single_thread");
    g.throughput(Throughput::Elements(BATCH as u64));
    let f = frame();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let vec = || (0..BATCH).map(|i| record(i, &f)).collect::<Vec<Record>>();
    let batch = || {
        (0..BATCH)
            .map(|i| record(i, &f))
            .collect::<Pending<Record>>()
    };

    let (producers, consumer) = sluice_buffer::channel::<Record>(limits(1)).unwrap();
    let mut producer = producers.producer("s").unwrap();
    g.bench_function("send_recv_complete_256", |b| {
        b.iter_batched(
            vec,
            |batch| {
                producer.try_send(batch).unwrap();
                let got = consumer.try_recv().unwrap();
                consumer.complete(got)
            },
            CBatch::SmallInput,
        )
    });

    // The same cycle through a tokio `mpsc` of `Vec`s, as a baseline.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Record>>(CAPACITY / BATCH);
    g.bench_function("mpsc_vecs_send_recv_256", |b| {
        b.iter_batched(
            vec,
            |batch| {
                tx.try_send(batch).unwrap();
                // Dropped here, as `complete` drops what it completes.
                rx.try_recv().unwrap().len()
            },
            CBatch::SmallInput,
        )
    });

    let buf = BufferManager::<Record>::builder(limits(1))
        .pipeline("p", ["sink"])
        .build()
        .unwrap();
    let info = buf.pipeline_by_name("p").unwrap().clone();
    let src = buf.register_source("s", info.id).unwrap();
    let mut seq = 1u64;
    g.bench_function("admit_next_batch_complete_256", |b| {
        b.iter_batched(
            batch,
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

fn contenders(c: &mut Criterion) {
    let f = frame();
    let rt = runtime();
    for (p, cons) in SCENARIOS {
        for build in BUILDS {
            let mut g = c.benchmark_group(format!("contenders/{p}p{cons}c/{}", build_name(build)));
            g.throughput(Throughput::Elements(RECORDS as u64));
            g.sample_size(10);
            g.warm_up_time(Duration::from_millis(500));
            g.measurement_time(Duration::from_secs(3));
            for contender in Contender::ALL {
                g.bench_function(contender.name(), |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let input = inputs(contender, build, p, &f);
                            total += rt.block_on(run(contender, cons, input, &f));
                        }
                        total
                    })
                });
            }
            g.finish();
        }
    }
}

/// The contenders in alternating rounds; prints, per scenario, each one's
/// median throughput and sluice's median ratio to each channel.
fn alternating() {
    let rounds = rounds();
    if rounds == 0 {
        return;
    }
    let f = frame();
    let rt = runtime();
    println!("\nalternating rounds ({rounds} per scenario, {RECORDS} records each):");
    println!(
        "{:<22} {:>12} {:>12} {:>12} {:>14} {:>14}",
        "scenario", "sluice M/s", "vecs M/s", "records M/s", "sluice/vecs", "sluice/records"
    );
    for (p, cons) in SCENARIOS {
        for build in BUILDS {
            let mut rates: [Vec<f64>; 3] = Default::default();
            let mut ratios: [Vec<f64>; 2] = Default::default();
            for _ in 0..rounds {
                let mut round = [0f64; 3];
                for (k, contender) in Contender::ALL.into_iter().enumerate() {
                    let input = inputs(contender, build, p, &f);
                    let t = rt.block_on(run(contender, cons, input, &f));
                    round[k] = RECORDS as f64 / t.as_secs_f64() / 1e6;
                    rates[k].push(round[k]);
                }
                ratios[0].push(round[0] / round[1]);
                ratios[1].push(round[0] / round[2]);
            }
            println!(
                "{:<22} {:>12.1} {:>12.1} {:>12.1} {:>14.2} {:>14.2}",
                format!("{p}p{cons}c/{}", build_name(build)),
                median(&mut rates[0]),
                median(&mut rates[1]),
                median(&mut rates[2]),
                median(&mut ratios[0]),
                median(&mut ratios[1]),
            );
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    single_thread(&mut c);
    contenders(&mut c);
    c.final_summary();
    alternating();
}
