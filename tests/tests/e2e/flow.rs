//! The flow of records end to end: credits, signals and rejects, fairness
//! between sources, retries and dead letters, reconnects, bad input, the
//! shutdown drain and the memory gate. A real engine on 127.0.0.1 (port 0),
//! real gRPC, the Rust source client and raw generated clients. Every test is
//! bounded by a tokio timeout.

use std::time::{Duration, Instant};

use sluice_client::{ClientEvent, ClientOptions, SourceClient, Summary};
use sluice_config::Limit;
use sluice_proto::v1::{SignalKind, SignalReason};
use sluice_tests::*;

async fn compliant_source_through_slow_sink(n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = test_settings(dir.path());
    s.pipelines[0].sink = file_sink(&dir.path().join("sink"), Duration::from_millis(20), 0.0);
    s.pipelines[0].batch.max_records = 500;
    s.buffer.global = Limit::new(20_000, 64 << 20);
    s.buffer.per_stage = Limit::new(4_000, 16 << 20);
    s.buffer.per_source = Limit::new(10_000, 32 << 20);
    let engine = start_engine(s, |b| b).await;
    let addr = url(&engine);
    let started = Instant::now();
    let (summary, events) = send_all(&addr, "compliant", n, 100, ClientOptions::default()).await;
    eprintln!("{n} records in {:?}: {summary:?}", started.elapsed());
    assert!(summary.is_complete(), "{summary:?}");
    assert_eq!(summary.rejected, 0, "a compliant source is never rejected");
    assert_eq!(summary.acked, n);
    // Credit is paced (granted only below the high watermark), so the level
    // never crosses it: no SLOW_DOWN / PAUSE / RESUME sawtooth.
    let told: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, ClientEvent::Signal(_)))
        .collect();
    assert!(told.is_empty(), "no signal expected: {told:?}");
    engine.shutdown().await.unwrap();
    let keys = delivered_keys(&dir.path().join("sink"));
    assert_exactly_once(&keys, "compliant", n);
}

/// (a) A compliant source through a slow sink: 200k records, never rejected,
/// never signalled (paced credit), each record in the sink exactly once.
/// About 10 s in a debug build on 2 cores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compliant_source_is_paced_never_rejected_and_delivered_once() {
    tokio::time::timeout(
        Duration::from_secs(55),
        compliant_source_through_slow_sink(200_000),
    )
    .await
    .expect("in time");
}

// ---------------------------------------------------------------------------
// Raw protocol helpers (a source that does not use the Rust client).
// ---------------------------------------------------------------------------

use sluice_proto::v1::{
    Batch, Record, Reject, RejectReason, SourceMessage, engine_message, source_message,
};

/// Runs a compliant client in the background: `n` records from `source`.
fn background_source(addr: &str, source: &'static str, n: u64) -> tokio::task::JoinHandle<Summary> {
    let addr = addr.to_owned();
    tokio::spawn(async move {
        send_all(&addr, source, n, 100, ClientOptions::default())
            .await
            .0
    })
}

// ---------------------------------------------------------------------------
// (b) credits ignored
// ---------------------------------------------------------------------------

/// (b) A source that ignores its credits gets `Reject` for the excess and
/// loses nothing it was not told about; a compliant source is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_a_source_ignoring_credits_is_rejected_and_loses_nothing_silently() {
    tokio::time::timeout(Duration::from_secs(50), async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = test_settings(dir.path());
        s.pipelines[0].sink = file_sink(&dir.path().join("sink"), Duration::from_millis(10), 0.0);
        s.buffer.per_source = Limit::new(2_000, 16 << 20);
        let engine = start_engine(s, |b| b).await;
        let addr = url(&engine);
        let good = background_source(&addr, "good", 5_000);

        let mut raw = raw_stream(&addr, open_msg("blaster", "")).await.unwrap();
        let opened = raw.opened().await.unwrap();
        const BATCHES: u64 = 10;
        const PER: u64 = 1_000;
        for b in 0..BATCHES {
            raw.send(batch_msg(b * PER + 1, PER, 100)).await;
        }
        raw.tx = None; // half-close
        let mut rejects: Vec<Reject> = Vec::new();
        let mut acked = 0;
        loop {
            match raw.next().await {
                Ok(Some(engine_message::Body::Reject(r))) => rejects.push(r),
                Ok(Some(engine_message::Body::Ack(a))) => acked = acked.max(a.through_seq),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(status) => panic!("stream failed: {status}"),
            }
        }
        assert!(opened.credit.unwrap_or_default().records < BATCHES * PER);
        assert!(!rejects.is_empty(), "the excess is rejected");
        assert!(rejects.iter().any(|r| {
            [
                RejectReason::NoCredit,
                RejectReason::SourceLimit,
                RejectReason::GlobalLimit,
                RejectReason::StageLimit,
            ]
            .iter()
            .any(|k| r.reason == *k as i32)
        }));
        // Every record is either acked (admitted and completed) or named in a reject.
        let mut covered = vec![0u32; (BATCHES * PER + 1) as usize];
        for seq in 1..=acked {
            covered[seq as usize] += 1;
        }
        for r in &rejects {
            for seq in r.first_seq..r.first_seq + r.count {
                covered[seq as usize] += 1;
            }
        }
        let bad: Vec<usize> = (1..covered.len())
            .filter(|&i| covered[i] != 1)
            .take(10)
            .collect();
        assert!(
            bad.is_empty(),
            "seqs neither acked nor rejected, or both: {bad:?}"
        );

        let good = good.await.unwrap();
        assert!(good.is_complete(), "{good:?}");
        assert_eq!(good.rejected, 0, "the compliant source is never rejected");
        engine.shutdown().await.unwrap();
        let keys = delivered_keys(&dir.path().join("sink"));
        assert_exactly_once(&keys, "blaster", acked);
        assert_exactly_once(&keys, "good", 5_000);
    })
    .await
    .expect("in time");
}

/// Reads the stream until a `Reject` arrives.
async fn next_reject(raw: &mut Raw) -> Reject {
    loop {
        match raw.next().await {
            Ok(Some(engine_message::Body::Reject(r))) => return r,
            Ok(Some(_)) => {}
            other => panic!("expected a Reject, got {other:?}"),
        }
    }
}

/// Reads the stream until a `Credit` arrives (a `Reject` fails the test).
async fn next_credit(raw: &mut Raw) -> sluice_proto::v1::Credit {
    loop {
        match raw.next().await {
            Ok(Some(engine_message::Body::Credit(c))) => return c,
            Ok(Some(engine_message::Body::Reject(r))) => panic!("unexpected reject {r:?}"),
            Ok(Some(_)) => {}
            other => panic!("expected a Credit, got {other:?}"),
        }
    }
}

/// (b) Nothing is admitted beyond the stream's credit, even with the buffers
/// nearly empty: the excess of a batch is rejected NO_CREDIT (with a
/// retry-after and the credit the engine counts, rejected records not
/// charged), the covered prefix is admitted, a resend's duplicate prefix is
/// free, and a record larger than half the byte window is admitted alone on
/// one record credit. Everything admitted is acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_records_beyond_credit_are_rejected_even_with_free_capacity() {
    tokio::time::timeout(Duration::from_secs(20), async {
        let dir = tempfile::tempdir().unwrap();
        let engine = start_engine(test_settings(dir.path()), |b| b).await;
        let addr = url(&engine);
        let mut raw = raw_stream(&addr, open_msg("greedy", "")).await.unwrap();
        let opened = raw.opened().await.unwrap();
        // A stream that only opened holds its guaranteed share.
        let credit = opened.credit.unwrap_or_default();
        assert_eq!(Some(credit), opened.guaranteed, "{opened:?}");
        let window = opened.window.unwrap_or_default();
        let c = credit.records;

        // 500 records more than the credit, in one batch, into an empty engine.
        raw.send(batch_msg(1, c + 500, 100)).await;
        let r = next_reject(&mut raw).await;
        assert_eq!(r.reason, RejectReason::NoCredit as i32, "{r:?}");
        assert_eq!(
            (r.first_seq, r.count, r.admitted_through_seq),
            (c + 1, 500, c)
        );
        assert!(r.retry_after_ms > 0, "{r:?}");
        assert!(
            r.message
                .contains(&format!("outstanding credit {c} records")),
            "{r:?}"
        );
        let left = r.credit.expect("Reject.credit");
        assert_eq!(left.records, 0, "all record credit used: {r:?}");
        assert_eq!(left.bytes, credit.bytes - c * 100, "{r:?}");

        // New credit comes; a resend from seq 1 is free up to what was admitted.
        let more = next_credit(&mut raw).await;
        assert!(more.records >= 500, "{more:?}");
        raw.send(batch_msg(1, c + 500, 100)).await;

        // A record larger than half the byte window (and than the byte credit
        // left): admitted alone on one record credit; the record after it is
        // beyond the byte credit.
        let big = window.bytes / 2 * 3;
        let next = c + 501;
        raw.send(SourceMessage {
            body: Some(source_message::Body::Batch(Batch {
                first_seq: next,
                records: vec![
                    Record {
                        payload: payload(next, big as usize),
                        ..Record::default()
                    },
                    Record {
                        payload: payload(next + 1, 100),
                        ..Record::default()
                    },
                ],
                ..Batch::default()
            })),
        })
        .await;
        let r = next_reject(&mut raw).await;
        assert_eq!(r.reason, RejectReason::NoCredit as i32, "{r:?}");
        assert_eq!(
            (r.first_seq, r.count, r.admitted_through_seq),
            (next + 1, 1, next)
        );
        assert_eq!(r.credit.expect("Reject.credit").bytes, 0, "{r:?}");
        next_credit(&mut raw).await;
        raw.send(batch_msg(next + 1, 1, 100)).await;
        let acked = raw.finish().await;
        assert_eq!(acked, next + 1);
        assert_eq!(engine.buffer().audit(), Ok(()));
        engine.shutdown().await.unwrap();
        assert_exactly_once(
            &delivered_keys(&dir.path().join("sink")),
            "greedy",
            next + 1,
        );
    })
    .await
    .expect("in time");
}

// ---------------------------------------------------------------------------
// (c) fairness
// ---------------------------------------------------------------------------

/// (c) A flooding source (ignores credits, resends at once after every reject)
/// cannot starve a compliant one: the compliant source gets at least half of
/// its fair share of what the sink delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_a_flooding_source_cannot_starve_another() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    tokio::time::timeout(Duration::from_secs(50), async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = test_settings(dir.path());
        s.pipelines[0].sink = file_sink(&dir.path().join("sink"), Duration::from_millis(20), 0.0);
        s.pipelines[0].batch.max_records = 200;
        s.buffer.global = Limit::new(4_000, 64 << 20);
        s.buffer.per_stage = Limit::new(4_000, 64 << 20);
        s.buffer.per_source = Limit::new(4_000, 64 << 20);
        let engine = start_engine(s, |b| b).await;
        let addr = url(&engine);

        // The flooder: a writer that never looks at credits, and a reader
        // that rewinds it after each reject.
        let mut raw = raw_stream(&addr, open_msg("flood", "")).await.unwrap();
        let flood_opened = raw.opened().await.unwrap();
        eprintln!("flooder Opened credit: {:?}", flood_opened.credit);
        let rewind = Arc::new(AtomicU64::new(0));
        let delivered_flood = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let flood_granted = Arc::new(AtomicU64::new(0));
        let tx = raw.tx.take().unwrap();
        let writer = {
            let (rewind, stop) = (rewind.clone(), stop.clone());
            tokio::spawn(async move {
                let mut next = 1u64;
                while !stop.load(Ordering::Relaxed) {
                    let r = rewind.swap(0, Ordering::AcqRel);
                    if r > 0 {
                        next = r;
                    }
                    if tx.send(batch_msg(next, 200, 100)).await.is_err() {
                        break;
                    }
                    next += 200;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        };
        let reader = {
            let (rewind, delivered, granted) =
                (rewind.clone(), delivered_flood.clone(), flood_granted.clone());
            tokio::spawn(async move {
                while let Ok(Some(body)) = raw.next().await {
                    match body {
                        engine_message::Body::Reject(r) if r.first_seq == r.admitted_through_seq + 1 => {
                            rewind.store(r.first_seq, Ordering::Release);
                        }
                        engine_message::Body::Ack(a) => delivered.store(a.delivered, Ordering::Release),
                        engine_message::Body::Credit(c) => {
                            granted.fetch_add(c.records, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            })
        };
        // The compliant source sends as fast as its credits allow.
        let (client, _events) =
            SourceClient::connect(&addr, "fair", "", ClientOptions::default()).await.unwrap();
        let progress = client.progress();
        let sender = tokio::spawn(async move {
            let mut i = 0;
            loop {
                i += 1;
                if client.send_payload(payload(i, 100)).await.is_err() {
                    break;
                }
                if i == 1_000_000 {
                    break;
                }
            }
            client
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (f0, c0) = (
            delivered_flood.load(Ordering::Acquire),
            progress.borrow().delivered,
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (f1, c1) = (
            delivered_flood.load(Ordering::Acquire),
            progress.borrow().delivered,
        );
        stop.store(true, Ordering::Relaxed);
        let (flood, fair) = (f1 - f0, c1 - c0);
        eprintln!(
            "in 3 s: flooder delivered {flood} (credits granted after Opened: {}), compliant delivered {fair}; compliant: {:?}",
            flood_granted.load(Ordering::Relaxed),
            *progress.borrow()
        );
        let share = (flood + fair) as f64 / 2.0;
        assert!(flood + fair > 0);
        assert!(
            fair as f64 >= share / 2.0,
            "compliant source got {fair} of {} (fair share {share})",
            flood + fair
        );
        sender.abort();
        writer.abort();
        reader.abort();
        let _ = engine.shutdown().await;
    })
    .await
    .expect("in time");
}

// ---------------------------------------------------------------------------
// (d) failures, retries, dead letters
// ---------------------------------------------------------------------------

/// (d) Injected transform and sink failures are retried, then dead-lettered
/// with their reason; acks still advance over every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_failures_are_retried_then_dead_lettered_with_reasons() {
    use sluice_config::{StageSpec, TransformSpec};
    tokio::time::timeout(Duration::from_secs(50), async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = test_settings(dir.path());
        s.pipelines[0].stages = vec![
            StageSpec {
                name: "flaky".into(),
                transform: TransformSpec::Fail { rate: 0.05 },
            },
            StageSpec {
                name: "identity".into(),
                transform: TransformSpec::Identity,
            },
        ];
        s.pipelines[0].sink = file_sink(&dir.path().join("sink"), Duration::ZERO, 0.2);
        s.pipelines[0].batch.max_records = 50;
        s.retry.max_retries = 2;
        s.retry.initial_backoff = Duration::from_millis(1);
        s.retry.max_backoff = Duration::from_millis(5);
        let engine = start_engine(s, |b| b).await;
        const N: u64 = 3_000;
        let (summary, _) =
            send_all(&url(&engine), "flaky-src", N, 50, ClientOptions::default()).await;
        assert!(
            summary.is_complete(),
            "acks advance over failures: {summary:?}"
        );
        assert_eq!(summary.acked, N);
        assert!(summary.dead_lettered > 0, "{summary:?}");
        assert_eq!(summary.delivered + summary.dead_lettered, N, "{summary:?}");
        engine.shutdown().await.unwrap();

        let dead = read_jsonl(&dir.path().join("dead"));
        assert_eq!(dead.len() as u64, summary.dead_lettered);
        for d in &dead {
            let error = d["error"].as_str().unwrap_or_default();
            let stage = d["stage"].as_str().unwrap_or_default();
            assert!(
                !error.is_empty() && !stage.is_empty(),
                "dead letter without reason: {d}"
            );
            assert_eq!(d["retries"].as_u64(), Some(2), "{d}");
        }
        assert!(
            dead.iter().any(|d| d["stage"] == "flaky"),
            "transform failures dead-lettered"
        );
        // Every record is in the sink or in the dead letters, once.
        let mut all = delivered_keys(&dir.path().join("sink"));
        for (k, n) in delivered_keys(&dir.path().join("dead")) {
            *all.entry(k).or_insert(0) += n;
        }
        assert_exactly_once(&all, "flaky-src", N);
    })
    .await
    .expect("in time");
}

// ---------------------------------------------------------------------------
// (e) disconnect and reconnect
// ---------------------------------------------------------------------------

/// (e) A connection cut mid-stream: the client reconnects, resends after the
/// engine's admitted sequence, and the sink has no duplicates and no gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_disconnect_and_reconnect_without_duplicates_or_gaps() {
    tokio::time::timeout(Duration::from_secs(50), async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = test_settings(dir.path());
        s.pipelines[0].sink = file_sink(&dir.path().join("sink"), Duration::from_millis(5), 0.0);
        let engine = start_engine(s, |b| b).await;
        let proxy = Proxy::start(engine.local_addr()).await;
        const N: u64 = 30_000;
        let opts = reconnecting(10, Duration::from_millis(50), Duration::from_millis(500));
        let (client, mut events) = SourceClient::connect(&proxy.addr, "flappy", "", opts)
            .await
            .unwrap();
        let progress = client.progress();
        let sender = tokio::spawn(async move {
            for i in 1..=N {
                client.send_payload(payload(i, 100)).await.unwrap();
            }
            client.finish().await
        });
        let mut cuts = 0;
        for _ in 0..2 {
            // Cut while records are in flight.
            let target = progress.borrow().acked + 5_000;
            while progress.borrow().acked < target.min(N - 5_000) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            cuts += proxy.cut();
        }
        let summary = sender.await.unwrap();
        assert!(cuts >= 2, "connections cut: {cuts}");
        assert!(summary.is_complete(), "{summary:?}");
        assert!(summary.reconnects >= 2, "{summary:?}");
        let mut reconnected = Vec::new();
        while let Ok(e) = events.try_recv() {
            if let ClientEvent::Connected { attempt, opened } = e
                && attempt > 0
            {
                reconnected.push(opened.admitted_through_seq);
            }
        }
        assert!(
            reconnected.iter().all(|&a| a > 0),
            "engine remembered admissions: {reconnected:?}"
        );
        drop(proxy); // stops accepting and cuts what is left
        engine.shutdown().await.unwrap();
        assert_exactly_once(&delivered_keys(&dir.path().join("sink")), "flappy", N);
    })
    .await
    .expect("in time");
}

// ---------------------------------------------------------------------------
// (f) bad input
// ---------------------------------------------------------------------------

/// (f) Protocol errors each get a clear status or reject naming the problem,
/// while another source keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_bad_input_gets_clear_errors_and_others_are_still_served() {
    use tonic::Code;
    tokio::time::timeout(Duration::from_secs(50), async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = test_settings(dir.path());
        s.pipelines[0].sink = file_sink(&dir.path().join("sink"), Duration::from_millis(2), 0.0);
        let engine = start_engine(s, |b| b).await;
        let addr = url(&engine);
        let good = background_source(&addr, "bystander", 20_000);

        // Batch before Open.
        let st = expect_status(raw_stream(&addr, batch_msg(1, 1, 10)).await).await;
        assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
        assert!(st.message().contains("Open"), "{st:?}");

        // Unknown pipeline.
        let st = expect_status(raw_stream(&addr, open_msg("x1", "no-such-pipeline")).await).await;
        assert_eq!(st.code(), Code::NotFound, "{st:?}");
        assert!(st.message().contains("no-such-pipeline"), "{st:?}");

        // Empty source id.
        let st = expect_status(raw_stream(&addr, open_msg("", "")).await).await;
        assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
        assert!(st.message().contains("source_id"), "{st:?}");

        // Second Open.
        let mut raw = raw_stream(&addr, open_msg("x2", "")).await.unwrap();
        raw.opened().await.unwrap();
        raw.send(open_msg("x2", "")).await;
        let st = expect_status(Ok(raw)).await;
        assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
        assert!(st.message().contains("twice"), "{st:?}");

        // first_seq 0.
        let mut raw = raw_stream(&addr, open_msg("x3", "")).await.unwrap();
        raw.opened().await.unwrap();
        raw.send(batch_msg(0, 1, 10)).await;
        let st = expect_status(Ok(raw)).await;
        assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
        assert!(st.message().contains("first_seq"), "{st:?}");

        // Non-contiguous sequence: a Reject (SEQUENCE_GAP), the stream stays usable.
        let mut raw = raw_stream(&addr, open_msg("x4", "")).await.unwrap();
        raw.opened().await.unwrap();
        raw.send(batch_msg(1, 2, 10)).await;
        raw.send(batch_msg(5, 3, 10)).await;
        match raw.next_notable().await.unwrap() {
            Some(engine_message::Body::Reject(r)) => {
                assert_eq!(r.reason, RejectReason::SequenceGap as i32, "{r:?}");
                assert_eq!((r.first_seq, r.count, r.admitted_through_seq), (5, 3, 2));
                assert!(!r.message.is_empty());
            }
            other => panic!("expected a SEQUENCE_GAP reject, got {other:?}"),
        }
        // Empty batch: allowed, no effect (per ingest.proto); then a good batch is admitted.
        raw.send(batch_msg(3, 0, 10)).await;
        raw.send(batch_msg(3, 2, 10)).await;
        let acked = raw.finish().await;
        assert_eq!(acked, 4);

        let good = good.await.unwrap();
        assert!(good.is_complete(), "bystander unaffected: {good:?}");
        assert_eq!(good.rejected, 0);
        assert!(!engine.is_finished(), "server still running");
        engine.shutdown().await.unwrap();
        assert_exactly_once(
            &delivered_keys(&dir.path().join("sink")),
            "bystander",
            20_000,
        );
    })
    .await
    .expect("in time");
}

/// (f) A source the engine has admitted nothing from may start at any
/// sequence number (after an engine restart it resends from its first unacked
/// record): it is admitted, acks start just below it, and from then on the
/// sequence is fixed (older numbers are duplicates, a jump is a gap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_a_new_source_may_start_at_any_sequence_number() {
    tokio::time::timeout(Duration::from_secs(20), async {
        let dir = tempfile::tempdir().unwrap();
        let engine = start_engine(test_settings(dir.path()), |b| b).await;
        let addr = url(&engine);
        let mut raw = raw_stream(&addr, open_msg("resumer", "")).await.unwrap();
        assert_eq!(raw.opened().await.unwrap().admitted_through_seq, 0);
        raw.send(batch_msg(5_000, 10, 50)).await;
        // Overlapping the start: what is at or below the admitted sequence is
        // a duplicate (covered by the acks, not admitted again), the rest new.
        raw.send(batch_msg(4_990, 22, 50)).await;
        // A jump: a gap.
        raw.send(batch_msg(6_000, 1, 50)).await;
        match raw.next_notable().await.unwrap() {
            Some(engine_message::Body::Reject(r)) => {
                assert_eq!(r.reason, RejectReason::SequenceGap as i32, "{r:?}");
                assert_eq!(
                    (r.first_seq, r.admitted_through_seq),
                    (6_000, 5_011),
                    "{r:?}"
                );
            }
            other => panic!("expected a SEQUENCE_GAP reject, got {other:?}"),
        }
        raw.tx = None;
        let mut acked = 0;
        loop {
            match raw.next().await {
                Ok(Some(engine_message::Body::Ack(a))) => {
                    assert!(a.through_seq >= 4_999, "{a:?}");
                    acked = acked.max(a.through_seq);
                }
                Ok(Some(engine_message::Body::Reject(r))) => panic!("unexpected reject {r:?}"),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(st) => panic!("unexpected status {st:?}"),
            }
        }
        assert_eq!(acked, 5_011);
        engine.shutdown().await.unwrap();
        let mut seqs: Vec<u64> = delivered_keys(&dir.path().join("sink"))
            .into_iter()
            .map(|((_, seq), n)| {
                assert_eq!(n, 1);
                seq
            })
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (5_000..=5_011).collect::<Vec<_>>());
    })
    .await
    .expect("in time");
}

/// (f) A message larger than `server.max_message_bytes` fails the stream with
/// a status naming the size problem (gRPC's message size limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_oversized_message_fails_the_stream_with_a_status() {
    use tonic::Code;
    tokio::time::timeout(Duration::from_secs(20), async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = test_settings(dir.path());
        s.server.max_message_bytes = 64 * 1024;
        let engine = start_engine(s, |b| b).await;
        let addr = url(&engine);
        let mut raw = raw_stream(&addr, open_msg("x5", "")).await.unwrap();
        raw.opened().await.unwrap();
        raw.send(batch_msg(1, 1, 100 * 1024)).await;
        let st = expect_status(Ok(raw)).await;
        assert!(
            matches!(
                st.code(),
                Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
            ),
            "{st:?}"
        );
        assert!(
            st.message().contains("too large") || st.message().contains("length"),
            "{st:?}"
        );

        engine.shutdown().await.unwrap();
    })
    .await
    .expect("in time");
}

// ---------------------------------------------------------------------------
// (g) shutdown
// ---------------------------------------------------------------------------

/// (g) Shutdown pauses sources (reason SHUTDOWN), drains what was admitted to
/// the sink and acks it; what the engine acked is exactly what the sink has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_shutdown_drains_and_acks() {
    tokio::time::timeout(Duration::from_secs(50), async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = test_settings(dir.path());
        s.pipelines[0].sink = file_sink(&dir.path().join("sink"), Duration::from_millis(20), 0.0);
        s.pipelines[0].batch.max_records = 200;
        let engine = start_engine(s, |b| b).await;
        let opts = ClientOptions {
            connect_timeout: Duration::from_secs(2),
            ..reconnecting(1, Duration::from_millis(10), Duration::from_millis(10))
        };
        let (client, mut events) = SourceClient::connect(&url(&engine), "drainer", "", opts)
            .await
            .unwrap();
        let progress = client.progress();
        let sender = tokio::spawn(async move {
            for i in 1..=50_000 {
                if client.send_payload(payload(i, 100)).await.is_err() {
                    break;
                }
            }
            client.finish().await
        });
        while progress.borrow().acked < 2_000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let report = engine.shutdown().await.unwrap();
        assert!(report.drained, "{report:?}");
        assert_eq!(report.undelivered, 0);
        let summary = sender.await.unwrap();
        // The engine is gone: the client gives up after its one reconnect attempt.
        assert!(summary.error.is_some(), "{summary:?}");
        let mut shutdown_pause = false;
        while let Ok(e) = events.try_recv() {
            if let ClientEvent::Signal(s) = e
                && s.kind == SignalKind::Pause as i32
                && s.reason == SignalReason::Shutdown as i32
            {
                shutdown_pause = true;
            }
        }
        assert!(shutdown_pause, "PAUSE with reason SHUTDOWN");
        let acked = progress.borrow().acked_through;
        assert!(acked >= 2_000);
        // Everything acked is in the sink, and nothing else: the drain acked all it admitted.
        assert_exactly_once(&delivered_keys(&dir.path().join("sink")), "drainer", acked);
    })
    .await
    .expect("in time");
}

// ---------------------------------------------------------------------------
// (h) memory gate
// ---------------------------------------------------------------------------

/// (h) The memory gate, driven by an injected probe, pauses every source
/// (reason MEMORY) and resumes them when memory falls; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h_memory_gate_pauses_and_resumes_every_source() {
    use sluice_buffer::ManualProbe;
    tokio::time::timeout(Duration::from_secs(50), async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = test_settings(dir.path());
        s.memory.enabled = true;
        s.memory.activate_percent = 90.0;
        s.memory.resume_percent = 70.0;
        s.memory.refresh_ms = 10;
        s.pipelines[0].sink = file_sink(&dir.path().join("sink"), Duration::from_millis(2), 0.0);
        let probe = ManualProbe::new(10, 100);
        let engine = start_engine(s, |b| b.memory_probe(probe.clone())).await;
        let addr = url(&engine);
        let mut clients = Vec::new();
        for name in ["m1", "m2", "m3"] {
            let (client, events) = SourceClient::connect(&addr, name, "", ClientOptions::default())
                .await
                .unwrap();
            let progress = client.progress();
            let task = tokio::spawn(async move {
                let t0 = Instant::now();
                for i in 1..=6_000u64 {
                    // About 4000 records/s, so the run spans the gate's close and reopen.
                    let due = t0 + Duration::from_micros(i * 250);
                    tokio::time::sleep_until(due.into()).await;
                    client.send_payload(payload(i, 50)).await.unwrap();
                }
                client.finish().await
            });
            clients.push((name, progress, events, task));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        probe.set_used(95);
        // Every source is paused for MEMORY.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !clients.iter().all(|(_, p, _, _)| {
            p.borrow().last_signal.as_ref().is_some_and(|s| {
                s.kind == SignalKind::Pause as i32 && s.reason == SignalReason::Memory as i32
            })
        }) {
            assert!(
                Instant::now() < deadline,
                "not every source was paused for MEMORY"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Admin.Stats names the reading that closed the gate.
        let memory = engine.stats().memory.expect("memory stats");
        assert!(memory.closed, "{memory:?}");
        assert_eq!(memory.measured, "process", "{memory:?}");
        // A host reading (memory.include_host) is named as such.
        probe.set(sluice_buffer::MemoryReading::of(
            sluice_buffer::Measured::Host,
            96,
            100,
        ));
        let deadline = Instant::now() + Duration::from_secs(5);
        while engine.stats().memory.is_none_or(|m| m.measured != "host") {
            assert!(Instant::now() < deadline, "the host reading is not named");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        probe.set_used(95);
        // While the gate is closed no new credit comes: progress stalls once
        // credits are used up.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let sent_closed: Vec<u64> = clients.iter().map(|(_, p, _, _)| p.borrow().sent).collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent_later: Vec<u64> = clients.iter().map(|(_, p, _, _)| p.borrow().sent).collect();
        assert_eq!(
            sent_closed, sent_later,
            "nothing sent while the gate is closed and credits are used"
        );
        probe.set_used(50);
        for (name, _, mut events, task) in clients {
            let summary = task.await.unwrap();
            assert!(summary.is_complete(), "{name}: {summary:?}");
            let mut memory_pause = false;
            let mut resumed_after = false;
            while let Ok(e) = events.try_recv() {
                if let ClientEvent::Signal(s) = e {
                    if s.kind == SignalKind::Pause as i32 && s.reason == SignalReason::Memory as i32
                    {
                        memory_pause = true;
                    } else if memory_pause && s.kind == SignalKind::Resume as i32 {
                        resumed_after = true;
                    }
                }
            }
            assert!(
                memory_pause && resumed_after,
                "{name}: PAUSE(MEMORY) then RESUME"
            );
        }
        engine.shutdown().await.unwrap();
        let keys = delivered_keys(&dir.path().join("sink"));
        for name in ["m1", "m2", "m3"] {
            assert_exactly_once(&keys, name, 6_000);
        }
    })
    .await
    .expect("in time");
}

// ---------------------------------------------------------------------------
// (i) no stall with a small entry stage
// ---------------------------------------------------------------------------

/// One source of the stall scenario: `n` records at `rate` records/s (or as
/// fast as credits allow), through the Rust client with the demo's options.
fn demo_like_source(
    addr: &str,
    name: &'static str,
    n: u64,
    rate: Option<u32>,
) -> (
    tokio::sync::watch::Receiver<sluice_client::Progress>,
    tokio::task::JoinHandle<Summary>,
) {
    let addr = addr.to_owned();
    let (ptx, prx) = tokio::sync::watch::channel(Default::default());
    let task = tokio::spawn(async move {
        let opts = ClientOptions {
            max_unacked: 5_000,
            max_batch_records: 200,
            ..ClientOptions::default()
        };
        let (client, _events) = SourceClient::connect(&addr, name, "", opts)
            .await
            .expect("connects");
        let _ = ptx.send(client.snapshot());
        let progress = client.progress();
        let forward = tokio::spawn(async move {
            let mut progress = progress;
            while progress.changed().await.is_ok() {
                let p = progress.borrow_and_update().clone();
                if ptx.send(p).is_err() {
                    break;
                }
            }
        });
        let t0 = Instant::now();
        for i in 1..=n {
            if let Some(rate) = rate {
                let due = t0 + Duration::from_secs_f64(i as f64 / f64::from(rate));
                tokio::time::sleep_until(due.into()).await;
            }
            client.send_payload(payload(i, 40)).await.expect("send");
        }
        let summary = client.finish().await;
        forward.abort();
        summary
    });
    (prx, task)
}

/// The demo's shape with a small entry stage: global 6000, stage 2000 (less
/// than three credit windows), source 3000 records; one transform stage
/// `tag`, a file sink taking `sink_delay` per batch, batches of 200.
fn small_entry_stage(
    dir: &std::path::Path,
    transform: sluice_config::TransformSpec,
    sink_delay: Duration,
) -> sluice_config::Settings {
    let mut s = test_settings(dir);
    s.buffer.global = Limit::new(6_000, 64 << 20);
    s.buffer.per_stage = Limit::new(2_000, 16 << 20);
    s.buffer.per_source = Limit::new(3_000, 32 << 20);
    s.pipelines[0].stages = vec![sluice_config::StageSpec {
        name: "tag".into(),
        transform,
    }];
    s.pipelines[0].sink = file_sink(&dir.join("sink"), sink_delay, 0.0);
    s.pipelines[0].batch.max_records = 200;
    s
}

/// (i) The demo's settings with a small entry stage (stage 2000 < 3 windows
/// of credit; global 6000, source 3000), a slow sink and three sources of
/// different speeds through the Rust client: the pipeline never stalls (acks
/// keep coming until every record is acked; a 3 s pause fails the test with
/// the buffer's and the sources' state) and every record is delivered exactly
/// once. About 6 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i_the_demo_with_a_small_entry_stage_does_not_stall() {
    use sluice_config::TransformSpec;
    tokio::time::timeout(Duration::from_secs(50), async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = small_entry_stage(
            dir.path(),
            TransformSpec::Set {
                field: "demo".into(),
                value: serde_json::Value::Bool(true),
            },
            Duration::from_millis(40),
        );
        s.pipelines[0].batch.linger = Duration::from_millis(10);
        let engine = start_engine(s, |b| b).await;
        let addr = url(&engine);
        let plan: [(&'static str, u64, Option<u32>); 3] = [
            ("fast", 15_000, None),
            ("steady", 6_000, Some(1_500)),
            ("trickle", 600, Some(150)),
        ];
        let sources: Vec<_> = plan
            .iter()
            .map(|&(name, n, rate)| (name, n, demo_like_source(&addr, name, n, rate)))
            .collect();
        // Watch for a stall: no ack progress anywhere for 3 s while records
        // are still unacked.
        let mut last = (0u64, Instant::now());
        loop {
            // A source whose task has ended counts as done here (its summary
            // is checked below): the progress forwarder is stopped when the
            // client finishes and may miss the client's last update.
            let acked: u64 = sources
                .iter()
                .map(|(_, n, (p, task))| if task.is_finished() { *n } else { p.borrow().acked })
                .sum();
            let total: u64 = sources.iter().map(|(_, n, _)| *n).sum();
            if acked >= total {
                break;
            }
            if acked > last.0 {
                last = (acked, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(3) {
                let progress: Vec<_> = sources
                    .iter()
                    .map(|(name, _, (p, _))| (*name, p.borrow().clone()))
                    .collect();
                let snap = engine.buffer().snapshot();
                let hub: Vec<_> = snap
                    .sources
                    .iter()
                    .map(|s| (s.name.clone(), engine.acks().progress(s.id), engine.controller().status(s.id)))
                    .collect();
                panic!(
                    "stalled at {acked} of {total} acked records\nbuffer: {snap:#?}\nengine acks and flow control: {hub:#?}\nsources: {progress:#?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (name, n, (_, task)) in sources {
            let summary = task.await.unwrap();
            assert!(summary.is_complete(), "{name}: {summary:?}");
            assert_eq!(summary.acked, n, "{name}");
        }
        assert_eq!(engine.buffer().audit(), Ok(()));
        engine.shutdown().await.unwrap();
        let keys = delivered_keys(&dir.path().join("sink"));
        for (name, n, _) in plan {
            assert_exactly_once(&keys, name, n);
        }
    })
    .await
    .expect("in time");
}

/// (i) Sources that hold credit and send nothing (idle, or obeying PAUSE
/// strictly: both are within the contract) cannot stall the others: the
/// entry stage (2000 records) is smaller than the credit windows of three
/// sources (3 × 1024); streams that only opened hold their guaranteed share
/// and no more, so a busy source gets its records through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i_idle_credit_holders_do_not_stall_a_busy_source() {
    use sluice_config::TransformSpec;
    tokio::time::timeout(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let s = small_entry_stage(
            dir.path(),
            TransformSpec::Identity,
            Duration::from_millis(10),
        );
        let engine = start_engine(s, |b| b).await;
        let addr = url(&engine);
        // Two idle sources: open, take their credit, send nothing.
        let mut idle = Vec::new();
        for name in ["idle-1", "idle-2"] {
            let mut raw = raw_stream(&addr, open_msg(name, "")).await.unwrap();
            let opened = raw.opened().await.unwrap();
            eprintln!("{name} Opened credit {:?}", opened.credit);
            idle.push(raw);
        }
        const N: u64 = 5_000;
        let busy = tokio::spawn({
            let addr = addr.clone();
            async move {
                send_all(&addr, "busy", N, 40, ClientOptions::default())
                    .await
                    .0
            }
        });
        let summary = tokio::time::timeout(Duration::from_secs(10), busy)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the busy source stalled\nbuffer: {:#?}",
                    engine.buffer().snapshot()
                )
            })
            .unwrap();
        assert!(summary.is_complete(), "{summary:?}");
        drop(idle);
        engine.shutdown().await.unwrap();
        assert_exactly_once(&delivered_keys(&dir.path().join("sink")), "busy", N);
    })
    .await
    .expect("in time");
}
