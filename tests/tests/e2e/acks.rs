//! Selective acks: one record waiting out a long retry backoff does not hold
//! back its source. The sink refuses record 7 (`{"n":7,…}`); it is retried
//! once after `BACKOFF` and then dead-lettered, while everything after it
//! completes, is reported in `Ack.completed` and is forgotten by the source.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_client::{ClientOptions, SourceClient};
use sluice_config::{RetryPolicy, Settings};
use sluice_engine::EngineHandle;
use sluice_engine::sink::{FileSink, Sink};
use sluice_proto::v1::engine_message;
use sluice_tests::*;

/// How long the refused record waits before its one retry.
const BACKOFF: Duration = Duration::from_secs(8);
/// The engine's `server.max_unacked_per_session`: a few credit windows.
const MAX_UNACKED: u64 = 4_000;

/// An engine whose sink refuses record 7 once and again after `BACKOFF`.
async fn engine_refusing_seven(dir: &std::path::Path) -> EngineHandle {
    let mut s: Settings = test_settings(dir);
    s.retry = RetryPolicy {
        max_retries: 1,
        initial_backoff: BACKOFF,
        max_backoff: BACKOFF,
    };
    s.server.max_unacked_per_session = MAX_UNACKED;
    s.pipelines[0].batch.max_records = 200;
    let file: Arc<dyn Sink> =
        Arc::new(FileSink::open(dir.join("sink"), "records", 1 << 26, false).unwrap());
    let refuse = Refuse::new(file, "{\"n\":7,", "refused on purpose");
    start_engine(s, |b| b.sink("default", refuse)).await
}

/// The Rust client with a window far smaller than what it sends: every
/// record but 7 is acked (by ranges) long before 7's retry, and `sluice
/// send`'s client holds only record 7 meanwhile. With cumulative acks only
/// it would stop after its window and wait out the backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_in_its_retry_backoff_does_not_hold_back_the_client() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine_refusing_seven(dir.path()).await;
        const N: u64 = 20_000;
        let opts = ClientOptions {
            max_unacked: 1_000,
            ..ClientOptions::default()
        };
        let (client, _events) = SourceClient::connect(&url(&engine), "held-back", "", opts)
            .await
            .expect("client connects");
        let started = Instant::now();
        for i in 1..=N {
            client.send_payload(payload(i, 100)).await.expect("send");
        }
        let mut progress = client.progress();
        progress
            .wait_for(|p| p.acked == N - 1)
            .await
            .expect("the client runs");
        let took = started.elapsed();
        assert!(
            took < BACKOFF,
            "{} records completed in {took:?}, before record 7's retry",
            N - 1
        );
        let p = client.snapshot();
        assert_eq!((p.acked_through, p.unacked, p.rejected), (6, 1, 0), "{p:?}");
        let summary = client.finish().await;
        assert!(summary.is_complete(), "{summary:?}");
        assert_eq!(
            (summary.delivered, summary.dead_lettered),
            (N - 1, 1),
            "{summary:?}"
        );
        engine.shutdown().await.unwrap();
        // Each record once in the sink, but 7 (dead-lettered).
        let keys = delivered_keys(&dir.path().join("sink"));
        let want: Vec<u64> = (1..=N).filter(|&s| s != 7).collect();
        assert_eq!(seqs_of(&keys, "held-back"), want);
    })
    .await
    .expect("in time");
}

/// A raw source that sends within its credit, many times
/// `server.max_unacked_per_session` records behind record 7: the engine
/// counts only the records not completed against the limit, so its credit
/// keeps coming; the acks list what completed above the frontier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_counts_records_not_completed_and_acks_ranges_above_the_frontier() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine_refusing_seven(dir.path()).await;
        let mut raw = raw_stream(&url(&engine), open_msg("raw-held-back", ""))
            .await
            .expect("stream opens");
        let opened = raw.opened().await.expect("Opened");
        assert_eq!(opened.max_unacked_records, MAX_UNACKED);
        let credit = opened.credit.unwrap_or_default();
        let (mut records, mut bytes) = (credit.records, credit.bytes);
        let (mut next, total) = (1u64, 3 * MAX_UNACKED);
        // Every sequence number a range of some Ack said is completed.
        let mut completed = BTreeSet::new();
        let mut through = 0;
        let started = Instant::now();
        while completed.len() as u64 != total - 7 {
            // 100-byte payloads: at most 110 bytes each with the number.
            let n = records.min(bytes / 110).min(total + 1 - next).min(500);
            if n > 0 {
                raw.must_send(batch_msg(next, n, 100)).await;
                next += n;
                records -= n;
                bytes -= n * 110;
                continue;
            }
            match raw
                .next_within(Duration::from_secs(5))
                .await
                .expect("no status")
            {
                Some(engine_message::Body::Credit(c)) => {
                    records += c.records;
                    bytes += c.bytes;
                }
                Some(engine_message::Body::Ack(a)) => {
                    assert!(!covers(&a, 7), "7 is not completed: {a:?}");
                    through = a.through_seq;
                    for r in &a.completed {
                        assert!(r.first > a.through_seq + 1 && r.first <= r.last, "{a:?}");
                        completed.extend(r.first..=r.last);
                    }
                }
                Some(engine_message::Body::Reject(r)) => panic!("rejected: {r:?}"),
                Some(_) => {}
                None => panic!("stream ended"),
            }
        }
        assert!(
            started.elapsed() < BACKOFF,
            "sent and completed before 7's retry"
        );
        assert_eq!(through, 6);
        assert_eq!(completed.first(), Some(&8));
        assert_eq!(completed.last(), Some(&total));
        // Record 7 is dead-lettered after its retry; then the stream ends.
        assert_eq!(raw.finish().await, total);
        engine.shutdown().await.unwrap();
    })
    .await
    .expect("in time");
}
